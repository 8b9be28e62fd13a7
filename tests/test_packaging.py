"""How the project installs: under the import name ``imagepush``, whatever the folders are called."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_folder_is_installed_under_imagepush():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {
        "imagepush." + ".".join(init.parent.relative_to(ROOT).parts)
        for top in ("pipeline", "transforms")
        for init in (ROOT / top).rglob("__init__.py")
    }
    assert sorted(config["packages"]) == sorted(folders)
    assert config["package-dir"] == {"imagepush.pipeline": "pipeline", "imagepush.transforms": "transforms"}


def test_our_modules_load_once_and_only_as_imagepush():
    import imagepush.pipeline.cli  # noqa: F401
    import imagepush.transforms.beam.migrate  # noqa: F401

    ours = [name for name, module in sys.modules.items()
            if name.split(".")[0] in ("pipeline", "transforms")
            and str(getattr(module, "__file__", "") or "").startswith(str(ROOT))]
    assert ours == []


def test_a_project_with_its_own_transforms_and_pipeline_packages_can_embed_us(tmp_path):
    for name in ("transforms", "pipeline"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text(f"OWNER = 'the embedding project: {name}'\n")
    script = (
        "import transforms, pipeline\n"
        "from imagepush.transforms.beam.migrate import MigrateImages\n"
        "from imagepush.pipeline.cli import main\n"
        "print(transforms.OWNER); print(pipeline.OWNER); print(MigrateImages.__module__)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.splitlines() == [
        "the embedding project: transforms", "the embedding project: pipeline", "imagepush.transforms.beam.migrate",
    ]


def test_the_public_transforms_load_on_first_use_and_formats_alone_do_not_import_beam():
    script = (
        "import sys\n"
        "import imagepush.transforms.formats.manifest, imagepush.transforms.stores.layout.oci\n"
        "print('apache_beam' in sys.modules)\n"
        "from imagepush.transforms import MigrateImages, WriteAudit, ListSyncs\n"
        "print(MigrateImages.__module__, 'apache_beam' in sys.modules)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.splitlines() == ["False", "imagepush.transforms.beam.migrate True"]
