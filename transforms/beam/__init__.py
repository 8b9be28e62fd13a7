"""The Beam steps: thin DoFns over the engine, and the composite transforms users compose."""
