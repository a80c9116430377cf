"""Outputs that appear whole (maple.data.files), and that replace only what maple wrote: an output path is a user
setting, and a mistyped one must not delete someone's folder."""

from __future__ import annotations

import pytest

from maple.data.files import OUTPUT_MARKER, atomic_path, clear_partial_output


def write_folder(path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.mkdir()
        (tmp / "index.bin").write_text(text)


def test_a_folder_output_replaces_the_previous_run_of_itself(tmp_path):
    out = tmp_path / "index"
    write_folder(out, "first")
    write_folder(out, "second")
    assert (out / "index.bin").read_text() == "second" and (out / OUTPUT_MARKER).is_file()


def test_a_folder_that_maple_did_not_write_is_refused_before_any_work_and_kept(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "thesis.tex").write_text("years of work")
    ran = []
    with pytest.raises(FileExistsError, match=rf"{home} holds files maple did not write \(thesis.tex\)"):
        with atomic_path(home) as tmp:
            ran.append(tmp)
    assert ran == [] and (home / "thesis.tex").read_text() == "years of work"


def test_an_empty_folder_may_become_an_output(tmp_path):
    (tmp_path / "empty").mkdir()
    write_folder(tmp_path / "empty", "x")
    assert (tmp_path / "empty" / "index.bin").read_text() == "x"


def test_a_link_is_never_replaced(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / OUTPUT_MARKER).write_text("")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(FileExistsError, match="is a link"):
        write_folder(tmp_path / "link", "x")


def test_an_interrupted_parquet_write_is_cleared_but_a_folder_with_other_files_is_not(tmp_path):
    partial = tmp_path / "train"
    partial.mkdir()
    (partial / "a_000000_000000.parquet").write_bytes(b"PAR1")
    clear_partial_output(partial)
    assert not partial.exists()
    partial.mkdir()
    (partial / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="notes.txt"):
        clear_partial_output(partial)
    assert (partial / "notes.txt").exists()
