"""Named pretrained weights without network: a local HTTP server stands in for
download.pytorch.org and the Hugging Face Hub. Download, hash check, cache hit, TORCH_HOME reuse,
corrupted / interrupted / offline errors (one ``error:`` line), and the same logits from every
file format as the existing torchvision path."""

import dataclasses
import functools
import hashlib
import http.server
import json
import socket
import sys
import threading
import time
from pathlib import Path

import chex
import jax
import numpy as np
import pytest

import resnet_jax
from resnet_jax import weights
from resnet_jax.weights import Weights, WeightsError

MODEL = "resnet20"  # a registered network small enough to build in a test


class Server:
    """Serves ``files`` (path -> bytes) on 127.0.0.1; records every request's path.
    ``truncate[path] = n``: send the full Content-Length but only ``n`` bytes, then close."""

    def __init__(self):
        self.files, self.truncate, self.requests = {}, {}, []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's name)
                outer.requests.append(self.path)
                body = outer.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[: outer.truncate.get(self.path, len(body))])
                self.close_connection = True

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path):
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RESNET_JAX_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "cache" / "weights"


@pytest.fixture(scope="module")
def state_dict():
    """A torchvision-format state_dict (numpy) of resnet20 with 1000 ImageNet outputs."""
    model = resnet_jax.create_model(MODEL, num_classes=1000)
    return resnet_jax.to_torchvision(MODEL, random_variables(model, seed=0))


def random_variables(model, seed):
    """Random weights (small kernels; BN scales, biases, statistics around 1)."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(
        lambda x: (rng.normal(0, 0.05, x.shape) if x.ndim > 1 else rng.uniform(0.5, 1.5, x.shape)
                   ).astype(np.float32),
        resnet_jax.abstract_variables(model, (1, 32, 32, 3)))


def pth_bytes(state_dict, tmp_path):
    torch = pytest.importorskip("torch")
    path = tmp_path / "sd.pth"
    torch.save({k: torch.from_numpy(np.array(v)) for k, v in state_dict.items()}, path)
    return path.read_bytes()


def safetensors_bytes(state_dict):
    from safetensors.numpy import save

    return save({k: np.ascontiguousarray(v) for k, v in state_dict.items()
                 if not k.endswith("num_batches_tracked")})


def register(monkeypatch, server, source, tag, body, *, sha256=None, model=MODEL):
    """A registry entry served by ``server``; ``sha256`` defaults to the torchvision-style
    8-digit prefix of ``body``'s hash (in the file name too)."""
    digest = hashlib.sha256(body).hexdigest()
    sha256 = digest[:8] if sha256 is None else sha256
    file = f"{model}-{digest[:8]}.pth" if source == "torchvision" else "model.safetensors"
    path = f"/{source}/{tag}/{file}"
    server.files[path] = body
    entry = Weights(source, model, tag, server.url(path), sha256, 0.0, "test", image_size=32,
                    crop_fraction=1.0)
    monkeypatch.setitem(weights._REGISTRY, entry.name, entry)
    return entry


@functools.cache
def _apply(model):
    return jax.jit(lambda variables, x: model.apply(variables, x, train=False))


def _logits(model, variables):
    x = np.random.default_rng(0).uniform(size=(2, 32, 32, 3)).astype(np.float32)
    return np.asarray(_apply(model)(variables, x))


def test_download_verify_then_cache_hit_without_request(server, cache, monkeypatch, tmp_path,
                                                        state_dict):
    body = pth_bytes(state_dict, tmp_path)
    entry = register(monkeypatch, server, "torchvision", "TEST", body)
    net = resnet_jax.pretrained(f"{MODEL}.TEST", "torchvision")
    assert len(server.requests) == 1
    assert (cache / entry.file_name).read_bytes() == body
    assert sorted(p.name for p in cache.iterdir()) == [entry.file_name]  # no temporary left
    # The existing torchvision path: torch tensors through from_torchvision.
    torch = pytest.importorskip("torch")
    reference = resnet_jax.from_torchvision(
        MODEL, {k: torch.from_numpy(np.asarray(v)) for k, v in state_dict.items()})
    chex.assert_trees_all_equal(net.variables, reference)  # float32 both ways: exact
    expected = _logits(net.model, reference)  # one compiled network, two sets of variables
    assert np.all(np.isfinite(expected)) and np.abs(expected).max() > 1e-3  # a real signal
    chex.assert_trees_all_close(_logits(net.model, net.variables), expected, rtol=0, atol=1e-6)
    assert net.spec.class_names[:2] == ("tench", "goldfish") and net.spec.num_classes == 1000
    assert net.spec.normalization["kind"] == "mean_std"
    # Second use: the verified cached file, no request; the source's default tag resolves too.
    monkeypatch.setitem(weights._REGISTRY, entry.name, dataclasses.replace(entry, default=True))
    again = resnet_jax.pretrained(f"torchvision:{MODEL}")
    assert len(server.requests) == 1
    chex.assert_trees_all_equal(again.variables, net.variables)


def test_safetensors_from_the_hub_needs_no_torch(server, cache, monkeypatch, tmp_path,
                                                 state_dict):
    entry = register(monkeypatch, server, "timm", "a1_test", safetensors_bytes(state_dict),
                      sha256="")
    assert entry.file_name == f"timm-{MODEL}.a1_test-model.safetensors"
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` fails from here on
    net = resnet_jax.pretrained(f"timm:{MODEL}.a1_test")
    reference = resnet_jax.from_torchvision(MODEL, state_dict)
    chex.assert_trees_all_equal(net.variables, reference)
    chex.assert_trees_all_close(_logits(net.model, net.variables),
                                _logits(net.model, reference), rtol=0, atol=1e-6)


def test_torch_home_copy_is_used_in_place(server, cache, monkeypatch, tmp_path, state_dict):
    body = pth_bytes(state_dict, tmp_path)
    entry = register(monkeypatch, server, "torchvision", "TEST", body)
    hub_dir = tmp_path / "torch" / "hub" / "checkpoints"
    hub_dir.mkdir(parents=True)
    (hub_dir / entry.file_name).write_bytes(body)
    assert weights.download(entry) == hub_dir / entry.file_name
    assert server.requests == [] and not cache.exists()
    (hub_dir / entry.file_name).write_bytes(body[:-10] + b"0123456789")  # damaged on disk
    with pytest.raises(WeightsError, match="corrupt"):
        weights.download(entry)


def _one_error_line(capsys, argv):
    from resnet_jax.training import predict

    assert predict.main(argv) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), captured.err
    return err[0]


def test_hash_mismatch_is_one_error_line_and_nothing_is_kept(server, cache, monkeypatch,
                                                            tmp_path, state_dict, capsys):
    body = pth_bytes(state_dict, tmp_path)
    entry = register(monkeypatch, server, "torchvision", "TEST", body)
    served = body[:-10] + b"0123456789"  # what a corrupting proxy would deliver
    server.files[next(iter(server.files))] = served
    line = _one_error_line(capsys, ["--weights", entry.name, "x.jpg"])
    actual = hashlib.sha256(served).hexdigest()
    assert entry.url in line and actual in line and f"expected {entry.sha256}" in line, line
    assert list(cache.iterdir()) == []  # neither the file nor a temporary
    # A cached file damaged later is refused the same way, naming the file.
    (cache / entry.file_name).write_bytes(served)
    line = _one_error_line(capsys, ["--weights", entry.name, "x.jpg"])
    assert str(cache / entry.file_name) in line and actual in line and "delete it" in line


def test_interrupted_download_leaves_nothing(server, cache, monkeypatch, state_dict, capsys):
    entry = register(monkeypatch, server, "timm", "cut", safetensors_bytes(state_dict),
                      sha256="")  # unverified: only the length can tell
    server.truncate[next(iter(server.files))] = 1000
    line = _one_error_line(capsys, ["--weights", entry.name, "x.jpg"])
    assert "interrupted" in line and entry.url in line, line
    assert list(cache.iterdir()) == []
    server.truncate.clear()  # the next try downloads it whole
    assert weights.download(entry).stat().st_size == len(server.files[next(iter(server.files))])


def test_offline_is_one_error_line_within_seconds(cache, monkeypatch, capsys):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/models/{MODEL}-00000000.pth"
    entry = Weights("torchvision", MODEL, "OFF", url, "00000000", 0.0, "test")
    monkeypatch.setitem(weights._REGISTRY, entry.name, entry)
    start = time.monotonic()
    line = _one_error_line(capsys, ["--weights", entry.name, "x.jpg"])
    assert time.monotonic() - start < 3.0
    assert url in line and f"put it at {cache / entry.file_name}" in line, line


def test_unknown_names_are_named_with_suggestions():
    with pytest.raises(WeightsError, match="Did you mean: torchvision:resnet50"):
        weights.find("torchvision:resnet5")
    with pytest.raises(WeightsError, match="sources are torchvision, timm"):
        weights.find("torchvison:resnet50")
    assert weights.find("torchvision:resnet50").tag == "IMAGENET1K_V2"  # torchvision's DEFAULT
    assert weights.find("timm:resnet50").tag == "a1_in1k"


def test_registry_entries_are_consistent():
    names = weights.imagenet_class_names()
    assert len(names) == len(set(names)) == 1000 and names[0] == "tench"
    assert names[999] == "toilet tissue"
    for name in weights.list_weights():
        entry = weights.find(name)
        resnet_jax.create_model(entry.model)  # a registered network
        if entry.source == "torchvision":  # the file name carries the hash prefix it checks
            assert f"-{entry.sha256}.pth" in entry.url and len(entry.sha256) == 8
        assert (entry.top1 is None or 60 < entry.top1 < 90) and entry.top1_cited
    defaults = [w for w in weights._REGISTRY.values() if w.default]
    assert len(defaults) == len({(w.source, w.model) for w in defaults})
    docs = (Path(__file__).parents[1] / "docs" / "models.md").read_text()
    for name in weights.list_weights():  # the docs' table lists the registry as it is
        entry = weights.find(name)
        top1 = "not published" if entry.top1 is None else f"{entry.top1:.3f}".rstrip("0")
        assert f"| `{name}`{' (default)' if entry.default else ''} | " in docs, name
        assert f"({entry.url}) | " in docs and f"| {top1}" in docs, name


def to_hugging_face(state_dict):
    """torchvision names -> transformers' ResNetForImageClassification names (the inverse of
    the mapping under test, written out separately)."""
    out = {}
    for key, value in state_dict.items():
        parts = key.split(".")
        if key.endswith("num_batches_tracked"):
            continue
        if parts[0] in ("conv1", "bn1"):
            kind = "convolution" if parts[0] == "conv1" else "normalization"
            out[f"resnet.embedder.embedder.{kind}.{parts[-1]}"] = value
        elif parts[0] == "fc":
            out[f"classifier.1.{parts[1]}"] = value
        else:
            unit = f"resnet.encoder.stages.{int(parts[0][len('layer'):]) - 1}.layers.{parts[1]}"
            if parts[2] == "downsample":
                sub = f"shortcut.{'convolution' if parts[3] == '0' else 'normalization'}"
            else:
                kind = "convolution" if parts[2].startswith("conv") else "normalization"
                sub = f"layer.{int(parts[2][-1]) - 1}.{kind}"
            out[f"{unit}.{sub}.{parts[-1]}"] = value
    return out


def test_hugging_face_names_are_mapped_and_unmatched_ones_named(server, cache, monkeypatch):
    options = dict(shortcut="B")  # projection shortcuts: the Hub's `shortcut` modules
    model = resnet_jax.create_model(MODEL, num_classes=1000, **options)
    tv = resnet_jax.to_torchvision(MODEL, random_variables(model, 4), **options)
    hf = to_hugging_face(tv)
    assert any(".shortcut.normalization." in k for k in hf) and "classifier.1.weight" in hf
    body = safetensors_bytes(hf)
    entry = dataclasses.replace(weights.find("hf:microsoft/resnet-50"), model=MODEL,
                                url=server.url("/hf/model.safetensors"), tag="test/resnet-20")
    server.files["/hf/model.safetensors"] = body
    monkeypatch.setitem(weights._REGISTRY, entry.name, entry)
    net = resnet_jax.pretrained("hf:test/resnet-20", **options)
    chex.assert_trees_all_equal(net.variables, resnet_jax.from_torchvision(MODEL, tv, **options))
    hf["resnet.encoder.stages.0.layers.0.attention.weight"] = np.zeros(3, np.float32)
    server.files["/hf/model.safetensors"] = safetensors_bytes(hf)
    (cache / entry.file_name).unlink()
    with pytest.raises(WeightsError, match="no torchvision counterpart.*layers.0.attention.weight"):
        resnet_jax.pretrained("hf:test/resnet-20", **options)


def test_predict_prints_imagenet_class_names(server, cache, monkeypatch, tmp_path, state_dict,
                                             capsys):
    from PIL import Image

    from resnet_jax.training import predict

    entry = register(monkeypatch, server, "timm", "pred", safetensors_bytes(state_dict),
                      sha256="")
    image = tmp_path / "cat.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 48, 3), np.uint8)).save(image)
    assert predict.main(["--weights", entry.name, "--top", "3", str(image)]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    preds = json.loads(out[-1][len("predictions: "):])[0]["top"]
    names = weights.imagenet_class_names()
    assert [p["class"] for p in preds] == [names[p["index"]] for p in preds]
    assert out[0].startswith(f"{image}: {preds[0]['class']} ")


def test_evaluate_weights_by_name_equals_the_torchvision_file_path(server, cache, monkeypatch,
                                                                   tmp_path, capsys):
    """``--weights NAME`` = ``--torchvision FILE --normalization imagenet`` at the entry's size."""
    from resnet_jax.training import evaluate

    ten = resnet_jax.to_torchvision(MODEL, random_variables(resnet_jax.create_model(MODEL), 3))
    body = pth_bytes(ten, tmp_path)
    entry = register(monkeypatch, server, "torchvision", "TEN", body)
    common = ["--dataset", "digits", "--split", "test", "--batch_size", "64"]
    assert evaluate.main(["--weights", entry.name, *common]) == 0
    by_name = json.loads(capsys.readouterr().out.strip().splitlines()[-1][len("result: "):])
    assert evaluate.main(["--torchvision", str(tmp_path / "sd.pth"), "--model", MODEL,
                          "--normalization", "imagenet", "--image_size", "32", *common]) == 0
    by_file = json.loads(capsys.readouterr().out.strip().splitlines()[-1][len("result: "):])
    assert by_name["source"] == entry.name and by_name["num_examples"] == 359
    assert np.isfinite(by_name["loss"])
    for key in ("top1", "top5", "loss"):
        assert by_name[key] == by_file[key], key


def test_unverified_files_are_not_taken_from_torch_hub_and_unwritable_cache_is_named(
        server, cache, monkeypatch, state_dict, tmp_path):
    """torch.hub names files by URL basename ("model.safetensors" for every Hub repository):
    without a hash to confirm it, such a copy is not used; an unwritable cache is one line."""
    body = safetensors_bytes(state_dict)
    entry = register(monkeypatch, server, "timm", "hubcopy", body, sha256="")
    hub_dir = tmp_path / "torch" / "hub" / "checkpoints"
    hub_dir.mkdir(parents=True)
    (hub_dir / "model.safetensors").write_bytes(b"another repository's file")
    assert weights.download(entry) == cache / entry.file_name and len(server.requests) == 1
    not_a_dir = tmp_path / "a_file"  # unwritable even for root
    not_a_dir.write_text("")
    monkeypatch.setenv("RESNET_JAX_CACHE", str(not_a_dir))
    with pytest.raises(WeightsError, match="set RESNET_JAX_CACHE to a writable directory"):
        weights.download(entry)
