"""The engine's build: a rebuild that moves a tag removes the image the tag named before (a training
image's venv layer is gigabytes, and each commit's rebuild would otherwise leave one behind), keeps it
while a container uses it, and a failed build says so in one line. Small images on the local base."""

from __future__ import annotations

import pytest

from tfcluster.errors import UserError

TAG = "localhost/tfcluster/engine-test:latest"


@pytest.fixture
def build(engine, debian_base, tmp_path):
    """build(marker): an image of the base with one file, as TAG; returns its id."""
    def run(marker: str) -> str:
        (tmp_path / "Dockerfile").write_text(f"FROM {debian_base}\nRUN echo {marker} > /marker\n")
        engine.build(TAG, "-f", str(tmp_path / "Dockerfile"), context=str(tmp_path))
        return engine.image_id(TAG)

    yield run
    engine.run("rmi", "-f", TAG, check=False)


def test_a_rebuild_that_moves_the_tag_removes_the_old_image(engine, build, capsys):
    first = build("one")
    assert first and build("one") == first  # same content: the tag stays, nothing removed
    assert "named before" not in capsys.readouterr().out
    assert build("two") != first
    assert engine.image_id(first) == ""
    assert f"removed the image {TAG} named before ({first[:12]})" in capsys.readouterr().out


def test_an_image_a_container_uses_is_kept(engine, build, capsys):
    first = build("three")
    engine.run("create", "--name", "tfcluster-engine-test", first, "true")
    try:
        build("four")
        assert engine.image_id(first) == first
        assert f"kept (in use) the image {TAG} named before" in capsys.readouterr().out
    finally:
        engine.run("rm", "-f", "tfcluster-engine-test", check=False)
        engine.run("rmi", "-f", first, check=False)


def test_a_failed_build_is_one_clear_error_that_names_a_full_store(engine, debian_base, tmp_path):
    (tmp_path / "Dockerfile").write_text(f"FROM {debian_base}\nRUN exit 3\n")
    with pytest.raises(UserError, match=rf"build of {TAG} failed \(exit \d+\); its output is above; "
                                        r"the image store has [\d.]+ GiB free and this build needs about \d+ GiB"):
        engine.build(TAG, "-f", str(tmp_path / "Dockerfile"), context=str(tmp_path), space=2**60)
    with pytest.raises(UserError, match=r"its output is above$"):  # enough space: nothing about it
        engine.build(TAG, "-f", str(tmp_path / "Dockerfile"), context=str(tmp_path), space=0)
