"""Shared test fixtures: where the reference fixtures of the released implementation live,
and a random-weight HiT-Tiny checkpoint file."""
import dataclasses
import os
import pathlib

import pytest
import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def fixtures_dir():
    """HIT_FIXTURES, or ../shared/fixtures beside the repository. Skipped when absent,
    except under CI, where a missing fixture is a failure."""
    path = pathlib.Path(os.environ.get("HIT_FIXTURES", ROOT.parent / "shared" / "fixtures"))
    if not (path / "HiT_Tiny_random7_expected.pt").exists():
        if os.environ.get("CI"):
            pytest.fail(f"reference fixtures not found at {path} (set HIT_FIXTURES)")
        pytest.skip(f"reference fixtures not found at {path} (set HIT_FIXTURES)")
    return path


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """A random-weight HiT-Tiny saved as this project's checkpoint (model + config)."""
    import hit
    torch.manual_seed(0)
    model = hit.build_hit("tiny")
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pth"
    torch.save({"model": model.state_dict(), "config": dataclasses.asdict(model.cfg)}, path)
    return path
