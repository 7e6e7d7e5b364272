"""Core utilities: levels, Volume geometry, atomic writes, CLI dispatch."""

import numpy as np
import pytest

from spineplan import levels
from spineplan._atomic import atomic_path, write_text
from spineplan.errors import InputError, PlanningError
from spineplan.volume import Volume


def test_level_tables_are_consistent():
    assert levels.verse_code("L1") == 20 and levels.verse_code("T12") == 19 and levels.verse_code("C1") == 1
    assert levels.level_from_verse(26) == "S1" and levels.level_from_verse(28) == "T13"
    assert levels.TS_TOTAL_IDS[27] == "L5" and levels.TS_TOTAL_IDS[32] == "T12" and levels.TS_TOTAL_IDS[43] == "T1"
    assert levels.TS_TOTAL_IDS[44] == "C7" and levels.TS_TOTAL_IDS[50] == "C1"
    assert levels.level_range("L3-L5") == ["L3", "L4", "L5"]
    assert levels.level_range("L5-L3") == ["L3", "L4", "L5"]
    assert levels.level_range("T11-L2") == ["T11", "T12", "L1", "L2"]
    assert levels.level_range("L4-L6") == ["L4", "L5", "L6"]
    assert levels.sort_levels(["S1", "T12", "L1"]) == ["T12", "L1", "S1"]
    with pytest.raises(PlanningError, match="Unknown vertebral level"):
        levels.level_range("L9")


def test_volume_geometry_roundtrip():
    aff = np.array([[-0.7, 0, 0, 100.0], [0, -0.7, 0, 50.0], [0, 0, 2.5, -300.0], [0, 0, 0, 1]])
    v = Volume(np.zeros((10, 20, 30), np.int16), aff)
    assert v.orientation() == "RAS"
    np.testing.assert_allclose(v.spacing, [0.7, 0.7, 2.5])
    ijk = np.array([[1.5, 2.0, 3.0], [9, 19, 29]])
    np.testing.assert_allclose(v.world_to_index(v.index_to_world(ijk)), ijk, atol=1e-9)
    np.testing.assert_allclose(v.index_to_world([1, 0, 0]), [99.3, 50.0, -300.0])


def test_volume_sample_trilinear():
    arr = np.arange(4 * 4 * 4, dtype=np.float32).reshape(4, 4, 4)
    v = Volume(arr, np.diag([2.0, 2.0, 2.0, 1.0]))
    # value is linear in the index, so trilinear sampling is exact: 16*i + 4*j + k
    assert v.sample([[1.0, 2.0, 3.0]])[0] == pytest.approx(16 * 0.5 + 4 * 1 + 1.5)


def test_volume_rejects_bad_shapes():
    with pytest.raises(InputError):
        Volume(np.zeros((3, 3)), np.eye(4))
    with pytest.raises(InputError, match="singular"):
        Volume(np.zeros((3, 3, 3)), np.diag([1.0, 0.0, 1.0, 1.0]))


def test_atomic_write_leaves_nothing_on_error(tmp_path):
    target = tmp_path / "plan.json"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert not target.exists() and list(tmp_path.iterdir()) == []
    write_text(target, "ok")
    assert target.read_text() == "ok" and len(list(tmp_path.iterdir())) == 1


def test_cli_help_lists_commands(capsys):
    from spineplan.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    assert "not a certified medical device" in capsys.readouterr().out


def test_import_is_light():
    import subprocess
    import sys

    code = "import sys, spineplan; bad=[m for m in ('numpy','scipy','SimpleITK','nibabel','numba','matplotlib') if m in sys.modules]; print(bad)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_atomic_outputs_are_readable_by_others(tmp_path):
    import os
    import stat

    old = os.umask(0o022)
    try:
        write_text(tmp_path / "report.html", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "report.html").stat().st_mode) == 0o644
