"""ONNX bundles (model.onnx, labels.txt, model.toml): validated on load, clear refusals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from milesdeep.cli import run_app
from milesdeep.errors import MilesDeepError
from milesdeep.models.bundle import InputSpec, load_bundle, write_bundle

GOOD_SPEC = InputSpec(layout="NCHW", channels="BGR", size=(8, 6), resize="squash",
                      mean=(1.0, 2.0, 3.0), scale=1.0, antialias=False)


def tiny_onnx(path: Path, in_shape: list, n_out: int = 3) -> None:
    """input -> global average pool -> 3->n_out linear -> softmax."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(size=(3, n_out)).astype(np.float32), "w")
    nodes = [helper.make_node("GlobalAveragePool", ["x"], ["p"]),
             helper.make_node("Flatten", ["p"], ["f"], axis=1),
             helper.make_node("MatMul", ["f", "w"], ["l"]),
             helper.make_node("Softmax", ["l"], ["y"], axis=1)]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", n_out])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))


def make_bundle(d: Path, labels: tuple[str, ...] = ("a", "b", "other"),
                in_shape: list | None = None, n_out: int = 3) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    tiny_onnx(d / "model.onnx", in_shape or ["N", 3, 8, 6], n_out)
    return write_bundle(d, "model.onnx", labels, GOOD_SPEC, name="tiny",
                        other_label="other" if "other" in labels else None)


def edit_manifest(d: Path, old: str, new: str) -> None:
    path = d / "model.toml"
    text = path.read_text()
    assert old in text, f"{old!r} not in the manifest"
    path.write_text(text.replace(old, new, 1))


def test_a_good_bundle_loads(tmp_path: Path) -> None:
    b = load_bundle(make_bundle(tmp_path / "b"))
    assert b.labels == ("a", "b", "other") and b.other_label == "other"
    assert b.input == GOOD_SPEC and b.output_kind == "probabilities" and b.name == "tiny"


@pytest.mark.parametrize("old,new,says", [
    ('labels = "labels.txt"', 'lables = "labels.txt"', "key 'labels' is missing"),
    ('onnx = "model.onnx"', 'onnx = "missing.onnx"', "onnx = 'missing.onnx': no such file"),
    ('layout = "NCHW"', 'layout = "CHW"', "input.layout = 'CHW' is not one of"),
    ('channels = "BGR"', 'chanels = "BGR"', "unknown key(s) in [input]: chanels"),
    ('size = [8, 6]', 'size = [8]', "input.size must be [height, width]"),
    ('kind = "probabilities"', 'kind = "scores"', "output.kind = 'scores' is not one of"),
    ('kind = "probabilities"', 'knd = "logits"', "unknown key(s) in [output]: knd"),
    ('other_label = "other"', 'other_label = "others"', "other_label = 'others' is not among"),
    ('scale = 1.0', 'scale = 0', "input.scale must be a finite non-zero number"),
    # nan and inf ran to the end with every score nan (exit 0); true passed as 1.
    ('scale = 1.0', 'scale = nan', "input.scale must be a finite non-zero number"),
    ('scale = 1.0', 'scale = inf', "input.scale must be a finite non-zero number"),
    ('scale = 1.0', 'scale = true', "input.scale must be a finite non-zero number"),
    ('mean = [1.0, 2.0, 3.0]', 'mean = [nan, 2.0, 3.0]', "input.mean must be three finite"),
    ('mean = [1.0, 2.0, 3.0]', 'mean = [true, false, true]', "input.mean must be three finite"),
    ('size = [8, 6]', 'size = [true, true]', "input.size must be [height, width]"),
    ('resize = "squash"', 'resize = "squash"\nresize_to = [9, 9]',
     'input.resize_to is only used with resize = "resize-crop"'),
    ('name = "tiny"', 'name = "tiny', "cannot read the manifest"),
])
def test_wrong_manifest_keys_are_named(tmp_path: Path, old: str, new: str, says: str) -> None:
    d = make_bundle(tmp_path / "b")
    edit_manifest(d, old, new)
    with pytest.raises(MilesDeepError) as e:
        load_bundle(d)
    assert says in str(e.value) and "model.toml" in str(e.value)


def test_labels_must_match_the_outputs(tmp_path: Path) -> None:
    d = make_bundle(tmp_path / "b")
    (d / "labels.txt").write_text("a\nb\n")
    edit_manifest(d, 'other_label = "other"\n', "")
    with pytest.raises(MilesDeepError, match="3 scores per image .* the labels file has 2 labels"):
        load_bundle(d)
    (d / "labels.txt").write_text("a\nb\na\n")
    with pytest.raises(MilesDeepError, match="duplicate labels"):
        load_bundle(d)
    (d / "labels.txt").write_text("\n\n")
    with pytest.raises(MilesDeepError, match="labels file is empty"):
        load_bundle(d)


def test_the_input_must_fit_the_manifest(tmp_path: Path) -> None:
    d = make_bundle(tmp_path / "size", in_shape=["N", 3, 16, 6])
    with pytest.raises(MilesDeepError, match=r"model input is \[3, 16, 6\].*\[3, 8, 6\]"):
        load_bundle(d)
    d = make_bundle(tmp_path / "layout", in_shape=["N", 8, 6, 3])
    with pytest.raises(MilesDeepError, match="input.size or input.layout"):
        load_bundle(d)
    d = make_bundle(tmp_path / "rank", in_shape=["N", 3, 8])
    with pytest.raises(MilesDeepError, match="rank 3, a 4-D image batch is needed"):
        load_bundle(d)
    d = make_bundle(tmp_path / "notonnx")
    (d / "model.onnx").write_bytes(b"not a model")
    with pytest.raises(MilesDeepError, match="not a readable ONNX model"):
        load_bundle(d)
    (d / "model.onnx").write_bytes(b"")  # said "exactly one input, it has 0"
    with pytest.raises(MilesDeepError, match=r"not a readable ONNX model \(it holds no graph"):
        load_bundle(d)


def test_a_fixed_batch_model_takes_any_number_of_images(tmp_path: Path) -> None:
    """A model exported with a fixed batch (4 here) failed on any other batch size: batches
    are cut to it and the last padded, with the same scores as a model with a free batch."""
    from milesdeep.pipeline.infer import OrtClassifier

    free = OrtClassifier(load_bundle(make_bundle(tmp_path / "free")))
    fixed = OrtClassifier(load_bundle(make_bundle(tmp_path / "fixed", in_shape=[4, 3, 8, 6])))
    assert fixed.fixed_batch == 4 and free.fixed_batch is None
    x = np.random.default_rng(1).normal(size=(9, 3, 8, 6)).astype(np.float32)
    for n in (1, 4, 9):
        np.testing.assert_allclose(fixed.infer(x[:n]), free.infer(x[:n]), rtol=1e-6)


def test_a_conv_head_output_of_one_by_one_scores_fits_its_labels(tmp_path: Path) -> None:
    """(N, C, 1, 1) from a convolutional head is C scores an image; it was refused as '1
    outputs'."""
    from milesdeep.pipeline.infer import OrtClassifier

    d = make_bundle(tmp_path / "b")
    model = onnx.load(str(d / "model.onnx"))
    model.graph.node[-1].output[0] = "s"
    shape = numpy_helper.from_array(np.array([-1, 3, 1, 1], np.int64), "shape")
    model.graph.initializer.append(shape)
    model.graph.node.append(helper.make_node("Reshape", ["s", "shape"], ["y"]))
    del model.graph.output[:]
    model.graph.output.append(helper.make_tensor_value_info("y", TensorProto.FLOAT,
                                                            ["N", 3, 1, 1]))
    onnx.save(model, str(d / "model.onnx"))
    probs = OrtClassifier(load_bundle(d)).infer(np.ones((2, 3, 8, 6), np.float32))
    assert probs.shape == (2, 3) and np.allclose(probs.sum(axis=1), 1)
    (d / "labels.txt").write_text("a\nb\nother\nd\n")
    with pytest.raises(MilesDeepError, match=r"3 scores per image \(output \[3, 1, 1\]\)"):
        load_bundle(d)


def test_a_model_must_take_float_images(tmp_path: Path) -> None:
    d = make_bundle(tmp_path / "b")
    model = onnx.load(str(d / "model.onnx"))
    model.graph.input[0].type.tensor_type.elem_type = TensorProto.UINT8
    onnx.save(model, str(d / "model.onnx"))
    with pytest.raises(MilesDeepError, match="the model input is uint8, but images are fed as"):
        load_bundle(d)


def test_cli_refuses_a_bad_bundle_in_one_line(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    d = make_bundle(tmp_path / "b")
    (d / "labels.txt").write_text("a\nb\nother\nd\n")
    assert run_app(["tag", "--model", str(d), str(tmp_path / "video.mp4")]) == 1
    err = capsys.readouterr().err
    assert "4 labels" in err and "Traceback" not in err


def test_cli_models_lists_builtin_and_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    cache = tmp_path / "cache"
    monkeypatch.setenv("MILESDEEP_CACHE", str(cache))
    make_bundle(cache / "models" / ("ab" * 32), labels=("x", "y", "z"))
    assert run_app(["models"]) == 0
    out = capsys.readouterr().out
    assert "open-nsfw" in out and "sfw, nsfw" in out
    assert "tiny" in out and "x, y, z" in out and "NCHW BGR, squash to 8x6" in out
    broken = make_bundle(cache / "models" / ("cd" * 32), labels=("x", "y", "z"))
    (broken / "model.onnx").write_bytes(b"garbage")  # was listed as a usable model
    assert run_app(["models"]) == 0
    assert f"{'cd' * 6}  (cached, unreadable: " in capsys.readouterr().out


def test_labels_files_not_utf8_or_with_a_byte_order_mark(tmp_path: Path) -> None:
    """Latin-1 labels were a UnicodeDecodeError traceback; a BOM (Notepad) became part of
    the first label, so `-t a` named an unknown label that looked the same."""
    d = make_bundle(tmp_path / "b")
    (d / "labels.txt").write_bytes("\ufeffa\nb\nother\n".encode())
    assert load_bundle(d).labels == ("a", "b", "other")
    (d / "labels.txt").write_bytes(b"r\xe9d\nb\nother\n")
    with pytest.raises(MilesDeepError, match="labels file is not UTF-8 text") as e:
        load_bundle(d)
    assert e.value.path == d / "labels.txt"


def _with_last_node(d: Path, op: str) -> Path:
    """The tiny model with its Softmax replaced by `op` (on the logits)."""
    model = onnx.load(str(d / "model.onnx"))
    model.graph.node[-1].op_type = op
    del model.graph.node[-1].attribute[:]
    onnx.save(model, str(d / "model.onnx"))
    return d


def test_scores_a_model_gives_are_checked(tmp_path: Path) -> None:
    """A model giving NaN, or logits declared as probabilities, wrote a predictions file
    that `tag --from-predictions` then refused: it fails naming the model, with the fix."""
    from milesdeep.pipeline.infer import OrtClassifier

    x = np.ones((2, 3, 8, 6), np.float32)
    logits = _with_last_node(make_bundle(tmp_path / "logits"), "Identity")
    with pytest.raises(MilesDeepError, match=r'outside 0-1.*kind = "logits"'):
        OrtClassifier(load_bundle(logits)).infer(x * 50)
    edit_manifest(logits, 'kind = "probabilities"', 'kind = "logits"')
    assert np.allclose(OrtClassifier(load_bundle(logits)).infer(x * 50).sum(axis=1), 1)
    nan = _with_last_node(make_bundle(tmp_path / "nan"), "Log")  # log of negative logits
    with pytest.raises(MilesDeepError, match="NaN or infinite scores") as e:
        OrtClassifier(load_bundle(nan)).infer(np.concatenate([x, -x]) * 50)
    assert e.value.path == nan


def test_models_whose_output_is_not_scores_are_refused(tmp_path: Path) -> None:
    """One label with logits: softmax made every second that label. An integer output (an
    ArgMax) was taken as scores."""
    one = make_bundle(tmp_path / "one", labels=("red",), n_out=1)
    edit_manifest(one, 'kind = "probabilities"', 'kind = "logits"')
    with pytest.raises(MilesDeepError, match="needs two labels or more"):
        load_bundle(one)
    arg = make_bundle(tmp_path / "arg")
    model = onnx.load(str(arg / "model.onnx"))
    model.graph.node[-1].CopyFrom(helper.make_node("ArgMax", ["l"], ["y"], axis=1))
    model.graph.output[0].CopyFrom(helper.make_tensor_value_info("y", TensorProto.INT64,
                                                                 ["N", 1]))
    onnx.save(model, str(arg / "model.onnx"))
    with pytest.raises(MilesDeepError, match="the model's output is int64, not scores"):
        load_bundle(arg)


def test_a_model_failing_at_inference_is_one_line_naming_it(
        tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """A model that only runs at batch 1 (a fixed Reshape) was an "internal error; this is a
    bug" line, after ONNX Runtime's own log on stderr."""
    from milesdeep.pipeline.infer import OrtClassifier

    d = make_bundle(tmp_path / "b")
    model = onnx.load(str(d / "model.onnx"))
    model.graph.initializer.append(numpy_helper.from_array(np.array([1, 3], np.int64), "s1"))
    model.graph.node[-1].output[0] = "y0"
    model.graph.node.append(helper.make_node("Reshape", ["y0", "s1"], ["y"]))
    onnx.save(model, str(d / "model.onnx"))
    clf = OrtClassifier(load_bundle(d))
    assert clf.infer(np.ones((1, 3, 8, 6), np.float32)).shape == (1, 3)
    with pytest.raises(MilesDeepError, match="the model failed on a batch of 2 image") as e:
        clf.infer(np.ones((2, 3, 8, 6), np.float32))
    assert e.value.path == d / "model.onnx" and "\n" not in str(e.value)
    assert capfd.readouterr().err == ""


def test_a_labels_mismatch_found_at_run_time_names_the_bundle(tmp_path: Path) -> None:
    """An output of symbolic width passes the load check; the mismatch found on the first
    batch named no file."""
    from milesdeep.pipeline.infer import OrtClassifier

    d = make_bundle(tmp_path / "b")
    model = onnx.load(str(d / "model.onnx"))
    model.graph.output[0].type.tensor_type.shape.dim[1].dim_param = "C"
    onnx.save(model, str(d / "model.onnx"))
    (d / "labels.txt").write_text("a\nb\nother\nd\n")
    with pytest.raises(MilesDeepError, match="3 scores per image but there are 4") as e:
        OrtClassifier(load_bundle(d)).infer(np.ones((1, 3, 8, 6), np.float32))
    assert e.value.path == d
