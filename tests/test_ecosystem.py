"""dnetc networks in the PyTorch workflows people use with DenseNets: torch.fx and torchvision's feature
extraction, a segmentation model on a dnetc backbone, Grad-CAM with the torchvision recipe, timm's API."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.fx

from dnetc import compiler, dsl
from dnetc.compiler.emit import backbone, emit

from .conftest import ZOO_DISTINCT
from .test_memory import reduced
from .test_source import VOLUME

torchvision = pytest.importorskip("torchvision")
from torchvision.models.feature_extraction import create_feature_extractor  # noqa: E402


def _input(g, n: int = 2) -> torch.Tensor:
    return torch.randn(n, *g.nodes["input"]["shape"], dtype=torch.float64)


@pytest.mark.parametrize("name", ZOO_DISTINCT)
def test_every_zoo_model_traces_and_gives_its_feature_maps(name):
    """torch.fx traces the network; torchvision's feature extractor reads every tap of feature_info, and
    the maps equal the backbone's (timm's features_only) and the traced network's output the module's."""
    g = compiler.build_graph(reduced(name))
    torch.manual_seed(0)
    model = emit(g).double().eval()
    x = _input(g)
    traced = torch.fx.symbolic_trace(model)
    with torch.no_grad():
        assert torch.equal(traced(x), model(x))
        taps = [t["module"] for t in model.feature_info]
        extracted = create_feature_extractor(model, return_nodes=taps)(x)
        maps = backbone(model)(x)
    assert len(maps) == len(taps) >= 1
    for tap, mine, info in zip(taps, maps, model.feature_info, strict=True):
        assert torch.equal(extracted[tap], mine)
        assert mine.shape[1] == info["num_chs"]


@pytest.mark.parametrize("memory", ["checkpoint", "shared", "fused"])
def test_lowered_networks_trace_as_the_naive_one(memory):
    g = compiler.build_graph(reduced("densenet_bc"))
    torch.manual_seed(0)
    model = emit(g, memory).double().eval()
    x = _input(g)
    with torch.no_grad():
        assert torch.allclose(torch.fx.symbolic_trace(model)(x), model(x), rtol=0, atol=1e-12)


def test_torch_export_keeps_working():
    g = compiler.build_graph(reduced("fc_densenet"))
    model = emit(g).eval()
    x = torch.randn(1, *g.nodes["input"]["shape"])
    exported = torch.export.export(model, (x,))
    with torch.no_grad():
        assert torch.allclose(exported.module()(x), model(x), atol=1e-5)


def test_feature_info_in_1d_3d_and_u_shaped_networks():
    info = compiler.compile("densenet121").feature_info
    assert (info.channels(), info.reduction()) == ([64, 256, 512, 1024, 1024], [2, 4, 8, 16, 32])
    volume = compiler.compile(dsl.parse(VOLUME), features_only=True, out_indices=(-1,))
    maps = volume(torch.randn(1, 1, 8, 8, 8))
    assert [m.dim() for m in maps] == [5] and volume.feature_info.channels() == [maps[0].shape[1]]
    u = compiler.compile(reduced("fc_densenet"), features_only=True)
    sizes = [m.shape[-1] for m in u(torch.randn(1, 3, 32, 32))]
    assert sizes.index(min(sizes)) not in (0, len(sizes) - 1)  # down to the coarsest, then up again
    assert u.feature_info.reduction() == [32 // s for s in sizes]


def test_a_segmentation_model_on_a_dnetc_backbone_trains_one_step():
    """torchvision's FCN with a dnetc backbone from create_feature_extractor, one SGD step."""
    from torchvision.models.segmentation.fcn import FCN, FCNHead

    torch.manual_seed(0)
    model = compiler.compile("densenet_bc", depth=16, size=32)
    last = model.feature_info[-1]
    body = create_feature_extractor(model, return_nodes={last["module"]: "out"})
    fcn = FCN(body, FCNHead(last["num_chs"], 3))
    optimizer = torch.optim.SGD(fcn.parameters(), lr=0.1)
    x, target = torch.randn(2, 3, 32, 32), torch.randint(0, 3, (2, 32, 32))
    before = fcn.backbone.state_dict()["features.conv0.weight"].clone()
    loss = torch.nn.functional.cross_entropy(fcn(x)["out"], target)
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    assert fcn(x)["out"].shape == (2, 3, 32, 32)
    assert not torch.equal(fcn.backbone.state_dict()["features.conv0.weight"], before)


def test_grad_cam_with_the_torchvision_recipe_equals_torchvisions():
    """pytorch_grad_cam's GradCAM with `target_layers=[model.features[-1]]` on dnetc's densenet121 with
    torchvision's weights: the same maps as on torchvision's (which fails with "Invalid grads shape" if
    `features` ends pooled)."""
    pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    torch.manual_seed(0)
    reference = torchvision.models.densenet121(weights=None).eval()
    model = compiler.compile("densenet121").eval()
    model.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        assert torch.allclose(model.features(x), reference.features(x), rtol=0, atol=1e-5)
    cams = []
    for m in (model, reference):
        with GradCAM(model=m, target_layers=[m.features[-1]]) as cam:
            cams.append(cam(input_tensor=x, targets=[ClassifierOutputTarget(7)]))
    assert cams[0].shape == (1, 96, 96) and cams[0].max() > 0
    assert abs(cams[0] - cams[1]).max() < 1e-5


def test_timms_model_api():
    torch.manual_seed(0)
    model = compiler.compile("densenet_bc", depth=16, size=16).double()
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    maps = model.forward_features(x)
    assert maps.dim() == 4 and maps.shape[:2] == (2, model.classifier.in_features)
    pooled = model.forward_head(maps, pre_logits=True)
    assert pooled.shape == (2, maps.shape[1])
    assert torch.equal(model.forward_head(maps), model(x))
    assert model.get_classifier() is model.classifier
    model.reset_classifier(5)
    assert model(x).shape == (2, 5) and model.get_classifier().out_features == 5
    model.reset_classifier(0)
    assert model(x).shape == (2, maps.shape[1])


def test_grad_checkpointing_recomputes_and_keeps_everything_equal():
    """set_grad_checkpointing: the same loss, gradients and batch-norm statistics (float64)."""
    g = compiler.build_graph(reduced("densenet_bc"))
    torch.manual_seed(0)
    plain = emit(g).double()
    checkpointed = emit(g).double()
    checkpointed.load_state_dict(plain.state_dict())
    checkpointed.set_grad_checkpointing(True)
    x = _input(g, 3)
    for model in (plain, checkpointed):
        model(x).square().sum().backward()
    for (k, a), b in zip(plain.named_parameters(), checkpointed.parameters(), strict=True):
        assert torch.allclose(a.grad, b.grad, rtol=0, atol=1e-10), k
    for k, v in plain.state_dict().items():
        assert torch.allclose(checkpointed.state_dict()[k].double(), v.double(), rtol=0, atol=1e-12), k
    assert checkpointed.state_dict()["features.denseblock1.denselayer1.norm1.num_batches_tracked"].item() == 1


def test_torch_hub_loads_every_zoo_model_from_the_repository_folder():
    """`torch.hub.load(REPO, NAME, **parameters, source="local")`; the entry points, as torch.hub.list finds
    them (the hubconf's public callables), are the zoo."""
    import importlib.util

    root = Path(__file__).resolve().parent.parent
    spec = importlib.util.spec_from_file_location("hubconf", root / "hubconf.py")
    hubconf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hubconf)
    listed = {n for n in dir(hubconf) if callable(getattr(hubconf, n)) and not n.startswith("_")}
    assert listed == {p.stem for p in dsl.zoo_dir().glob("*.dnet")}
    model = torch.hub.load(str(root), "densenet_bc", depth=40, growth=12, source="local", trust_repo=True)
    expected = compiler.build_graph(dsl.load("densenet_bc", depth=40, growth=12)).graph["params"]
    assert sum(p.numel() for p in model.parameters()) == expected
    with pytest.raises(ValueError, match="no pretrained weights"):
        torch.hub.load(str(root), "densenet121", pretrained=True, source="local", trust_repo=True)


def test_a_safetensors_file_rebuilds_its_network_and_checks_its_weights(tmp_path, dnetc, monkeypatch):
    """--export safetensors writes the weights with the spec's texts (and what it uses), overrides,
    parameter count and SHA-256; the file alone rebuilds the network (from another folder: nothing is
    read from disk), and a flipped weight is caught."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from dnetc.runtime import checkpoint, tensorfile

    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "family.dnet").write_text(
        "network family(growth = 4, classes = 3) {\n    input 3 x 16 x 16\n    stem conv(3, 2 * growth)\n"
        "    dense(2, growth)\n    head classifier(classes)\n}\n"
    )
    (tmp_path / "mine.dnet").write_text('use family from "lib/family.dnet"\nnetwork mine = family(growth = 6)\n')
    torch.manual_seed(0)
    trained = compiler.compile(str(tmp_path / "mine.dnet"), classes=5)
    checkpoint.save({"model": trained.state_dict(), "epoch": 1}, tmp_path / "best.pt")
    out = tmp_path / "mine.safetensors"
    args = ["--set", "classes=5", "--weights", str(tmp_path / "best.pt"), "--export", "safetensors", str(out)]
    result = dnetc(str(tmp_path / "mine.dnet"), *args)
    assert result.returncode == 0, result.stderr
    with safe_open(str(out), "pt") as f:
        metadata = f.metadata()
    assert set(json.loads(metadata["dnetc.specs"])) == {"mine.dnet", "lib/family.dnet"}
    assert json.loads(metadata["dnetc.overrides"]) == ["classes=5"]
    assert int(metadata["dnetc.parameters"]) == sum(p.numel() for p in trained.parameters())
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    (tmp_path / "lib" / "family.dnet").unlink()  # the file holds every text it needs
    result = dnetc(str(out), "--summary")
    assert result.returncode == 0, result.stderr
    rebuilt = compiler.compile(tensorfile.load_spec(out))
    rebuilt.load_state_dict(load_file(str(out)), strict=True)
    trained.eval(), rebuilt.eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), trained(x))
    state = load_file(str(out))
    state["features.conv0.weight"][0, 0, 0, 0] += 1
    save_file(state, str(out), metadata=metadata)
    result = dnetc(str(out), "--summary")
    assert result.returncode == 2 and "SHA-256 does not match" in result.stderr


def test_weights_read_safetensors_files_of_other_tools(tmp_path, dnetc):
    """A state_dict saved as safetensors by another tool (torchvision's DenseNet keys, as timm's are) loads
    with --weights; as a SPEC it is refused with the way to use it."""
    from safetensors.torch import save_file

    from dnetc.runtime import weights

    torch.manual_seed(0)
    reference = torchvision.models.densenet121(weights=None)
    path = tmp_path / "densenet121.safetensors"
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(path))
    model = compiler.compile("densenet121")
    model.load_state_dict(weights.read(path), strict=True)
    assert torch.equal(model.features.conv0.weight, reference.features.conv0.weight)
    result = dnetc(str(path), "--summary")
    assert result.returncode == 2 and f"--weights {path}" in result.stderr


def test_the_package_installs_under_one_dnetc_namespace(tmp_path):
    """The wheel holds dnetc/dsl, dnetc/compiler, dnetc/runtime and dnetc/archs (with the grammar, the zoo
    and the dataset records) and no top-level `compiler` or `runtime`."""
    import shutil
    import subprocess
    import sys
    import zipfile

    root = Path(__file__).resolve().parent.parent
    source = tmp_path / "source"  # a copy: setuptools builds in the tree it is given
    for name in ("dsl", "compiler", "runtime", "archs"):
        shutil.copytree(root / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(root / name, source / name)
    wheel_args = ["wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(source)]
    build = subprocess.run([sys.executable, "-m", "pip", *wheel_args], capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = tmp_path.glob("dnetc-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"dnetc"}
    packages = {n.split("/")[1] for n in names if n.startswith("dnetc/")}
    assert packages == {"dsl", "compiler", "runtime", "archs"}
    assert "dnetc/dsl/dnet.lark" in names and "dnetc/archs/densenet121.dnet" in names
    assert any(n.startswith("dnetc/runtime/") and n.endswith(".toml") for n in names)
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "dnetc = dnetc.runtime.cli:main" in zipfile.ZipFile(wheel).read(entry).decode()


def test_a_graph_shows_its_table_and_diagram_in_a_notebook():
    import shutil

    g = compiler.build_graph(dsl.load("densenet_bc_100_12"))
    shown = g._repr_html_()
    assert compiler.compile(g)._repr_html_() == shown  # the compiled network shows its graph
    assert "769,162 params" in shown and "denseblock3" in shown
    assert (g._repr_svg_() is not None) == (shutil.which("dot") is not None)
    if shutil.which("dot"):
        assert "<svg" in shown


@pytest.mark.parametrize(
    ("name", "kind"), [("vovnet39a", "pth"), ("dpn68", "safetensors"), ("ese_vovnet19b_dw", "safetensors")]
)
def test_timms_own_weights_load_by_position_and_give_timms_outputs(name, kind, tmp_path, capsys):
    """A timm model's weights under timm's names load into dnetc's network of the same name and give
    timm's outputs: from a torch file in its own order, from a safetensors file (names sorted) in the
    order layouts.toml restores."""
    timm = pytest.importorskip("timm")
    from safetensors.torch import save_file

    from dnetc.runtime import weights

    torch.manual_seed(0)
    reference = timm.create_model(name, pretrained=False).eval()
    path = tmp_path / f"{name}.{kind}"
    if kind == "pth":
        torch.save(reference.state_dict(), path)
    else:
        save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, path)
    model = compiler.compile(name).eval()
    weights.load_into(model, path)
    order = "the file's own order" if kind == "pth" else "the order of timm's"
    assert order in capsys.readouterr().err
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(model(x), reference(x), atol=1e-4)


def test_layouts_give_the_order_of_each_tools_state_dict():
    """Sorting the names of a tool's state_dict by its layout gives the state_dict's own order, for every
    model each timm layout names (each also in dnetc's zoo) and for the HarDNet paper's code (its names
    recorded); the layout sharing most names is chosen; what no layout fits is refused whole."""
    timm = pytest.importorskip("timm")

    from dnetc.runtime import weights

    assert all(set(layout.models) <= set(dsl.zoo_names()) for layout in weights.LAYOUTS.values())
    for layout in weights.LAYOUTS.values():
        for name in layout.models if layout.tool == "timm" else ():
            with torch.device("meta"):
                keys = list(timm.create_model(name, pretrained=False).state_dict())
            assert layout.sort(sorted(keys)) == keys, name
    recorded = json.loads((Path(__file__).parent / "pingolh_hardnet.json").read_text())  # the paper's code's names
    for name in ("hardnet68", "hardnet39ds"):
        theirs = {key: torch.empty(shape, device="meta") for key, shape in recorded[name]}
        assert weights.LAYOUTS["pingolh-hardnet"].sort(sorted(theirs)) == list(theirs), name
        own = compiler.compile(name).state_dict()
        state, how = weights.renamed(own, dict(sorted(theirs.items())))
        assert how == "the order of PingoLH's HarDNet" and list(state) == list(own)
    own = compiler.compile("ese_vovnet19b_dw").state_dict()
    with torch.device("meta"):
        theirs = timm.create_model("ese_vovnet19b_dw", pretrained=False).state_dict()
    # names no layout knows, in an order that is not the network's: nothing fits
    unknown = {f"tensor{i}": v for i, (_, v) in enumerate(sorted(theirs.items(), key=lambda kv: kv[0][::-1]))}
    assert weights.renamed(own, unknown) is None
