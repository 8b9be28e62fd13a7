from imagepush.pipeline.cli import entry

entry()
