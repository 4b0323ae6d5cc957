"""Output folders, export manifests and engine names (samrt.artifacts): nothing samrt does
deletes or overwrites what it did not write."""

import json
import os

import pytest

from samrt.artifacts import (ArtifactError, ExportManifest, OutputDirError, atomic_write_json, atomic_write_text,
                             check_new_or_own_file, check_output_dir, engine_path, prepare_output_dir, read_marker,
                             record_entries, replace_recorded_entries)


def test_new_and_empty_folders_are_marked(tmp_path):
    for path in (tmp_path / "new" / "deeper", tmp_path / "empty"):
        if path.name == "empty":
            path.mkdir()
        prepare_output_dir(str(path), "export")
        assert read_marker(str(path))["kind"] == "export"


def test_a_foreign_folder_is_refused_untouched(tmp_path):
    (tmp_path / "a.txt").write_text("mine")
    (tmp_path / "sub").mkdir()
    before = sorted(os.listdir(tmp_path))
    with pytest.raises(OutputDirError, match=r"not empty \(2 entries: a.txt, sub\) and not written by samrt"):
        prepare_output_dir(str(tmp_path), "build-repo")
    with pytest.raises(OutputDirError, match="not written by samrt"):
        replace_recorded_entries(str(tmp_path), "build-repo")
    assert sorted(os.listdir(tmp_path)) == before and (tmp_path / "a.txt").read_text() == "mine"
    f = tmp_path / "a.txt"
    with pytest.raises(OutputDirError, match="got a file, expected a folder"):
        prepare_output_dir(str(f), "export")


def test_kinds_do_not_mix_except_where_accepted(tmp_path):
    prepare_output_dir(str(tmp_path), "export")
    (tmp_path / "x.onnx").write_text("")
    prepare_output_dir(str(tmp_path), "engines", accept=("export",))  # engines go into an export folder
    with pytest.raises(OutputDirError, match="holds the output of samrt export"):
        prepare_output_dir(str(tmp_path), "bench")


def test_check_output_dir_decides_as_prepare_and_changes_nothing(tmp_path):
    new = tmp_path / "new"
    assert check_output_dir(str(new), "amg-dataset") is None and not new.exists()
    prepare_output_dir(str(new), "amg-dataset", details={"options": {"points_per_side": 4}, "kind": "not this"})
    marker = check_output_dir(str(new), "amg-dataset")
    assert marker["kind"] == "amg-dataset" and marker["options"] == {"points_per_side": 4} and marker["entries"] == []
    prepare_output_dir(str(new), "amg-dataset", details={"options": {"points_per_side": 16}})  # marked: kept as it is
    assert read_marker(str(new))["options"] == {"points_per_side": 4}
    with pytest.raises(OutputDirError, match="holds the output of samrt amg-dataset"):
        check_output_dir(str(new), "export")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(OutputDirError, match=r"not empty \(1 entry: notes.txt\) and not written by samrt"):
        check_output_dir(str(foreign), "amg-dataset")
    assert os.listdir(foreign) == ["notes.txt"]


def test_atomic_writes_replace_whole_files_and_leave_nothing_behind(tmp_path, monkeypatch):
    path = tmp_path / "doc.json"
    atomic_write_json(str(path), {"a": [1, 2]}, indent=1)
    assert json.loads(path.read_text()) == {"a": [1, 2]}
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # as any new file, not mkstemp's 0600
    atomic_write_text(str(path), '{"b": 3}')
    assert json.loads(path.read_text()) == {"b": 3} and os.listdir(tmp_path) == ["doc.json"]
    with pytest.raises(TypeError):  # not serialisable: fails before any file is touched
        atomic_write_json(str(path), {"c": object()})
    assert json.loads(path.read_text()) == {"b": 3} and os.listdir(tmp_path) == ["doc.json"]

    def failing_replace(src, dst):
        assert os.path.isfile(src) and os.path.basename(src).endswith(".tmp")  # written beside the target
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk gone"):
        atomic_write_json(str(path), {"d": 4})
    assert json.loads(path.read_text()) == {"b": 3} and os.listdir(tmp_path) == ["doc.json"]


def test_replace_deletes_recorded_entries_only(tmp_path):
    prepare_output_dir(str(tmp_path), "build-repo")
    (tmp_path / "m1").mkdir()
    (tmp_path / "m1" / "f").write_text("")
    (tmp_path / "users").write_text("keep")
    record_entries(str(tmp_path), ["m1"])
    assert replace_recorded_entries(str(tmp_path), "build-repo") == ["m1"]
    assert sorted(os.listdir(tmp_path)) == [".samrt", "users"]
    with open(tmp_path / ".samrt", "w") as f:  # a marker cannot send the deletion outside its folder
        json.dump({"kind": "build-repo", "entries": ["../outside", "users/.."]}, f)
    (tmp_path.parent / "outside").mkdir(exist_ok=True)
    replace_recorded_entries(str(tmp_path), "build-repo")
    assert (tmp_path.parent / "outside").is_dir() and (tmp_path / "users").read_text() == "keep"


def test_files_are_overwritten_only_with_their_companion(tmp_path):
    target = tmp_path / "model.pth"
    check_new_or_own_file(str(target), [".train.json"], "train")  # new: fine
    target.write_text("someone's weights")
    with pytest.raises(OutputDirError, match="not written by samrt train"):
        check_new_or_own_file(str(target), [".train.json"], "train")
    (tmp_path / "model.pth.train.json").write_text("{}")
    check_new_or_own_file(str(target), [".train.json"], "train")


def test_manifest_errors_and_engine_names(tmp_path):
    with pytest.raises(ArtifactError, match="no export_report.json"):
        ExportManifest.read(str(tmp_path))
    (tmp_path / "export_report.json").write_text("{}")
    with pytest.raises(ArtifactError, match="not an export report written by samrt"):
        ExportManifest.read(str(tmp_path))
    assert engine_path("/e/vit_b.encoder.onnx", "/o", "onnxruntime", "int8") == "/o/vit_b.encoder.int8.onnx"
    assert engine_path("/e/vit_b.encoder.onnx", "/o", "onnxruntime", "fp32") == "/o/vit_b.encoder.opt.onnx"
    assert engine_path("/e/vit_b.decoder.onnx", "/o", "tensorrt", "fp16") == "/o/vit_b.decoder.fp16.plan"
    assert engine_path("/e/vit_b.encoder.onnx", "/o", "openvino", "bf16") == "/o/vit_b.encoder.bf16.xml"


def test_export_refuses_a_foreign_folder(tiny_sam, tiny_cfg, tmp_path):
    from samrt.export import export_sam

    (tmp_path / "keep.txt").write_text("x")
    with pytest.raises(OutputDirError, match="keep.txt"):
        export_sam(tiny_sam, tiny_cfg, str(tmp_path))
    assert os.listdir(tmp_path) == ["keep.txt"]


def test_manifest_of_a_real_export(tiny_export):
    m = ExportManifest.read(os.path.dirname(tiny_export.encoder_path))
    assert m.config.model_type == "tiny" and m.passed and os.path.isfile(m.encoder_path)
    assert m.random_init and "RANDOM-INIT" in m.describe()


def test_an_export_folder_without_a_marker_is_recognised_by_its_report(tiny_export, tmp_path):
    import shutil

    legacy = tmp_path / "old_export"
    legacy.mkdir()
    for f in ("export_report.json", os.path.basename(tiny_export.encoder_path), os.path.basename(tiny_export.decoder_path)):
        shutil.copy(os.path.join(os.path.dirname(tiny_export.encoder_path), f), legacy / f)
    prepare_output_dir(str(legacy), "engines", accept=("export",))  # engines may go into it
    assert read_marker(str(legacy))["kind"] == "export"
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "export_report.json").write_text("{}")  # not a samrt report: still refused
    with pytest.raises(OutputDirError):
        prepare_output_dir(str(tmp_path / "other"), "engines", accept=("export",))
