"""Video data paths without their optional inputs fail at once with one line saying what to install or give."""

import sys

import pytest

from mdm_jax.data import prepare_video, video


@pytest.fixture
def no_av(monkeypatch):
    monkeypatch.setitem(sys.modules, "av", None)  # import av -> ImportError, as without the [video] extra


def test_video_folder_without_pyav_names_the_package(no_av, tmp_path):
    (tmp_path / "a.mp4").write_bytes(b"not decoded")
    with pytest.raises(ImportError, match=r"video_folder.*pip install av"):
        video.VideoFolderSource(str(tmp_path), 32, frames=4)


def test_prepare_video_without_pyav_exits_with_one_line(no_av, tmp_path):
    with pytest.raises(SystemExit, match=r"needs PyAV.*pip install av"):
        prepare_video.main(["--out", str(tmp_path / "o"), "--num", "1", "--frames", "4", "--size", "8"])


def test_prepare_video_files_all_missing_is_an_error(tmp_path):
    with pytest.raises(SystemExit, match="none of the 1 input files"):
        prepare_video.main(["--out", str(tmp_path / "o"), "--source", "files", str(tmp_path / "missing.mp4")])


def test_video_folder_missing_dir_and_captions(tmp_path):
    with pytest.raises(video.MissingDataError, match="does not exist"):
        video.VideoFolderSource(str(tmp_path / "nope"), 32, frames=4)
    with pytest.raises(video.MissingDataError, match="captions file"):
        video.VideoFolderSource(str(tmp_path), 32, frames=4, captions_file=str(tmp_path / "c.csv"))
