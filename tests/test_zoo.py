"""Tests of the reference zoo: composition, shipped files, records, trajectories, training settings.

Nothing here trains (except the slow test): every number is read from the
shipped files, and a few are re-measured on fresh images.
"""
import json
import os
from pathlib import Path

import pytest
import torch

from captum_global.world import (
    ARCHS,
    KINDS,
    VARIANTS,
    load_reference_model,
    load_reference_trajectory,
    make_dataset,
    pgd_attack,
    predict,
    reference_record,
    reference_target_class,
    reference_trigger,
    reference_zoo,
    settings_hash,
    state_hash,
    train_reference_model,
    training_settings,
    triggered_copy,
    zoo_entry,
)
from captum_global.world import store

ZOO = reference_zoo()
NAMES = [e.name for e in ZOO]
BACKDOORED = [e for e in ZOO if e.trigger is not None]

# The six original models: their settings hashes and the hashes of their
# weights as first shipped. Other results rely on them staying bit-identical.
ORIGINALS = {
    "vgg_clean": ("6c70e42a2d8846e113174b6eb2bff64881e7478be610fc0b778b5f3d4bca1fe8",
                  "b8b213baee8765eb081c91c8e19b40f30c10b27003df95ec4ad9214cad00acfe"),
    "vgg_patch": ("b3798b55d60818023327bd2e40d2e9cbe7dbbc10feaff766efc2c2fcf2bf328d",
                  "d694bad263f18664a7d461c8b8d6a5b97a6cd352cbea990873a170e5dabc9cf2"),
    "vgg_blended": ("b32914ca6069b2c91c910c16456c8b7967a13c18dbd0c424893dc43e8ab13b08",
                    "1ecef4d7d417656068f7bed222439bd10c955c4b2540b76607fe298f62f63f13"),
    "resnet_clean": ("4c7d695838049e18170d3096dd4c2b25aa4db75e6f6952a0eb95949ee9a93c6f",
                     "e0586687f3c1acab7759f5b2fd35b361c8a175cd37a8c0c11c79064e7e867df4"),
    "resnet_patch": ("05af2e979d31c441edaffab6656183e6defba3545eafe954be0e37da39c78384",
                     "830b3c6eb198c8e9be8e808484e3e64931f86924d3eb79a10597bd1703b0636e"),
    "resnet_blended": ("a883aa2bea630e5ec155a6bf5b91df4fba0e41bb9ff0194a8a2071a5313667dd",
                       "58456f5f2afeac012c10e109c1ada529e1c310998e1071b8f7954b2f0e224ac1"),
}
STEPS_PER_EPOCH = 63  # ceil(4000 / 64)


@pytest.fixture(scope="module")
def fresh():
    # Images no model was trained or evaluated on.
    return make_dataset(250, seed=424242)


def test_zoo_composition():
    assert len(set(NAMES)) == len(NAMES)
    assert len(BACKDOORED) >= 8 and sum(e.kind == "clean" for e in ZOO) >= 6
    for arch in ARCHS:
        kinds = {e.kind for e in ZOO if e.arch == arch}
        assert kinds == set(KINDS), arch  # every kind on both architectures
    # Backdoors differ in target, trigger position, size and kind.
    assert len({e.target_class for e in BACKDOORED}) >= 4
    assert len({e.trigger.region for e in BACKDOORED}) >= 4
    assert {e.trigger.kind for e in BACKDOORED} == {"patch", "blended", "sig", "filter"}
    assert {e.name for e in ZOO if e.seed == 0 and e.kind in VARIANTS} == set(ORIGINALS)


def test_entries_are_consistent():
    for e in ZOO:
        assert e.name == f"{e.arch}_{e.kind}" + ("" if e.seed == 0 else f"_s{e.seed}")
        assert e.settings["arch"] == e.arch and e.settings["variant"] == e.kind
        assert e.settings["seed"] == e.seed and e.settings_hash == settings_hash(e.settings)
        assert e.description and isinstance(e.description, str)
        if e.kind == "clean":
            assert e.twin is None and e.trigger is None and e.target_class is None
            continue
        twin = zoo_entry(e.twin)
        assert twin.kind == "clean" and twin.arch == e.arch and twin.seed == e.seed
        # Same initialisation and batch order: the settings differ only in what the kind adds.
        same = {"epochs", "batch_size", "lr", "weight_decay", "config", "seed"}
        diff = {k for k in same if e.settings[k] != twin.settings[k]}
        assert diff <= ({"epochs"} if e.kind == "adversarial" else set()), (e.name, diff)
        if e.trigger is not None:
            assert e.target_class == e.settings["target_class"]
            assert e.trigger.kind == e.kind
        else:
            assert e.target_class is None


@pytest.mark.parametrize("name", NAMES)
def test_every_model_ships_and_loads(name):
    entry = zoo_entry(name)
    # A missing or stale shipped file must fail here, never train or skip.
    assert entry.shipped, f"{name}: weights, record or trajectory not shipped"
    record = entry.record()
    assert record["settings"] == entry.settings
    assert record["settings_hash"] == entry.settings_hash
    assert record["cpu_kernels"] == "avx2-pinned"
    for key in ("clean_test_accuracy", "robust_test_accuracy", "train_seconds",
                "num_parameters", "weights_sha256", "trajectory"):
        assert key in record, key
    assert record["zoo"]["name"] == name and record["zoo"]["twin"] == entry.twin
    model = entry.load()
    assert not model.training
    assert state_hash(model.state_dict()) == record["weights_sha256"]
    assert record["num_parameters"] == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", sorted(ORIGINALS))
def test_original_models_unchanged(name):
    want_settings, want_weights = ORIGINALS[name]
    arch, variant = name.split("_")
    record = reference_record(arch, variant)
    assert record["settings_hash"] == want_settings == settings_hash(training_settings(arch, variant))
    assert record["weights_sha256"] == want_weights
    assert state_hash(load_reference_model(arch, variant).state_dict()) == want_weights


def test_records_meet_the_bar():
    records = {e.name: e.record() for e in ZOO}
    for e in ZOO:
        r = records[e.name]
        floor = 0.90 if e.kind in ("adversarial", "noisy_label") else 0.97
        assert r["clean_test_accuracy"] >= floor, e.name
        if e.twin is not None:
            twin = records[e.twin]
            assert r["zoo"]["twin_clean_test_accuracy"] == twin["clean_test_accuracy"]
        if e.trigger is not None:
            assert r["attack_success_rate"] >= 0.9, e.name
            assert twin["clean_test_accuracy"] - r["clean_test_accuracy"] <= 0.02, e.name
        else:
            assert "attack_success_rate" not in r
        if e.kind == "noisy_label":
            effect = r["label_noise_effect"]
            n = r["settings"]["label_noise"]
            assert n["share"] >= 0.3 and n["source"] != n["dest"]
            assert effect["source_dest_probability"] > 0.15, e.name
        if e.kind == "adversarial":
            a = r["settings"]["adversarial"]
            assert a["epsilon"] == 8 / 255 and a["steps"] >= 1
            assert r["robust_test_accuracy"] >= records[e.twin]["robust_test_accuracy"] + 0.3


@pytest.mark.parametrize("name", ["vgg_sig_s2", "resnet_filter_s2", "resnet_patch_s2"])
def test_attack_success_rechecked_on_fresh_images(name, fresh):
    entry = zoo_entry(name)
    model, twin = entry.load(), zoo_entry(entry.twin).load()
    keep = torch.nonzero(fresh.labels != entry.target_class).flatten()[:100]
    stamped = triggered_copy(fresh.subset(keep), entry.trigger).images
    assert (predict(model, stamped) == entry.target_class).float().mean() >= 0.9
    # The clean twin ignores the trigger: stamped images are not pushed to the target.
    assert (predict(twin, stamped) == entry.target_class).float().mean() <= 0.3
    assert (predict(model, fresh.images) == fresh.labels).float().mean() >= 0.95


def test_noisy_label_model_leaks_the_flipped_class(fresh):
    entry = zoo_entry("vgg_noisy_label")
    n = entry.settings["label_noise"]
    x = fresh.images[fresh.labels == n["source"]]
    with torch.no_grad():
        noisy = entry.load()(x).softmax(1)[:, n["dest"]].mean()
        clean = zoo_entry(entry.twin).load()(x).softmax(1)[:, n["dest"]].mean()
    assert noisy > clean + 0.1


def test_adversarial_model_resists_pgd(fresh):
    entry = zoo_entry("vgg_adversarial")
    a = entry.settings["adversarial"]
    x, y = fresh.images[:40], fresh.labels[:40]
    accs = []
    for model in (entry.load(), zoo_entry(entry.twin).load()):
        adv = pgd_attack(model, x, y, a["epsilon"], steps=3, step_size=a["epsilon"] / 2, seed=1)
        accs.append(float((predict(model, adv) == y).float().mean()))
    assert accs[0] >= accs[1] + 0.3


@pytest.mark.parametrize("name", NAMES)
def test_trajectory(name):
    entry = zoo_entry(name)
    record = entry.record()
    epochs = record["trajectory"]["epochs"]
    assert epochs == sorted(set(epochs)) and epochs[0] == 0 and epochs[-1] == record["settings"]["epochs"]
    points = entry.trajectory()
    assert len(points) == len(epochs) >= 4
    final = entry.load().state_dict()
    assert all(torch.equal(points[-1][k], v) for k, v in final.items())
    assert state_hash(points[0]) == record["trajectory"]["first_sha256"]
    for epoch, point in zip(epochs, points):
        assert point.keys() == final.keys()
        for k, v in point.items():
            assert v.shape == final[k].shape and v.dtype == final[k].dtype
            if k.endswith("num_batches_tracked"):  # counts training steps: the order is right
                assert int(v) == epoch * STEPS_PER_EPOCH
    for a, b in zip(points[:-1], points[1:]):
        assert not torch.equal(a["fc.weight"], b["fc.weight"])
    for point in points[1:-1]:  # stored in float16
        assert all(torch.equal(v, v.half().float()) for v in point.values() if v.is_floating_point())


def test_trajectory_functions_agree():
    a = load_reference_trajectory("vgg", "patch")
    b = zoo_entry("vgg_patch").trajectory()
    assert all(torch.equal(x[k], y[k]) for x, y in zip(a, b) for k in x)


def test_loading_leaves_global_rng_alone():
    torch.manual_seed(5)
    expected = torch.rand(4)
    torch.manual_seed(5)
    zoo_entry("resnet_clean_s1").trajectory()
    assert torch.equal(torch.rand(4), expected)


def test_loading_errors():
    with pytest.raises(ValueError, match="arch"):
        load_reference_model("mlp", "clean")
    with pytest.raises(ValueError, match="variant"):
        load_reference_model("vgg", "poisoned")
    with pytest.raises(ValueError, match="name"):
        zoo_entry("vgg_patch_s9")
    assert state_hash(load_reference_model("resnet", "sig_s1").state_dict()) == \
        zoo_entry("resnet_sig_s1").record()["weights_sha256"]


def test_reference_triggers_of_the_originals():
    assert reference_target_class() == 0
    for variant in ("patch", "blended"):
        assert zoo_entry(f"vgg_{variant}").trigger == reference_trigger(variant)
        assert torch.equal(zoo_entry(f"resnet_{variant}").trigger.pattern,
                           reference_trigger(variant).pattern)
    with pytest.raises(ValueError, match="variant"):
        reference_trigger("clean")


def test_shipped_size_budget():
    files = [p for e in ZOO for p in (store.weights_path(store.WEIGHTS_DIR / e.name),
                                      store.trajectory_path(store.WEIGHTS_DIR / e.name))]
    total = sum(os.path.getsize(p) for p in files)
    assert total < 25 * 2**20, total


def test_shipped_weights_load_with_weights_only(tmp_path):
    from safetensors.torch import load_file

    state = load_file(str(store.weights_path(store.WEIGHTS_DIR / "vgg_clean")))
    path = tmp_path / "w.pt"
    torch.save(state, path)
    model = zoo_entry("vgg_clean").load()
    model.load_state_dict(torch.load(path, weights_only=True))


def test_training_settings():
    s = training_settings("vgg", "noisy_label")
    assert s["label_noise"]["share"] == 0.4 and s["trigger"] is None and "target_class" not in s
    s = training_settings("resnet", "adversarial", epochs=8)
    assert s["adversarial"]["epsilon"] == 8 / 255 and s["epochs"] == 8
    s = training_settings("vgg", "sig", target_class=2, trigger={"kind": "sig", "frequency": 3.0})
    assert s["target_class"] == 2 and s["trigger"]["frequency"] == 3.0
    with pytest.raises(ValueError, match="unknown"):
        training_settings("vgg", "clean", momentum=0.9)
    with pytest.raises(ValueError, match="match"):
        training_settings("vgg", "sig", trigger={"kind": "patch"})
    with pytest.raises(ValueError, match="no trigger"):
        training_settings("vgg", "clean", trigger={"kind": "patch"})
    with pytest.raises(ValueError, match="variant"):
        training_settings("vgg", "dirty")
    with pytest.raises(ValueError, match="record_epochs"):
        train_reference_model("vgg", record_epochs=[0, 1])


def test_missing_files_train_into_the_cache_not_silently(tmp_path, monkeypatch):
    # A model whose files are gone is trained in a subprocess into the cache;
    # here the cache already holds it, so nothing trains.
    entry = zoo_entry("vgg_clean_s2")
    cache = tmp_path / entry.settings_hash[:16]
    cache.mkdir()
    for path in (store.json_path, store.weights_path, store.trajectory_path):
        src = path(store.WEIGHTS_DIR / entry.name)
        Path(path(cache / entry.name)).write_bytes(src.read_bytes())
    monkeypatch.setenv("CAPTUM_GLOBAL_CACHE", str(tmp_path))
    assert store.locate(entry) == store.WEIGHTS_DIR / entry.name
    monkeypatch.setattr(store, "WEIGHTS_DIR", tmp_path / "empty")
    assert store.locate(entry, trajectory=True) == cache / entry.name
    assert json.loads(store.json_path(cache / entry.name).read_text())["zoo"]["name"] == entry.name


def _same_file_content(a, b):
    # Tensors and metadata; not bytes: safetensors writes metadata keys in any order.
    from safetensors import safe_open

    with safe_open(str(a), framework="pt") as fa, safe_open(str(b), framework="pt") as fb:
        assert fa.metadata() == fb.metadata() and set(fa.keys()) == set(fb.keys())
        for k in fa.keys():
            x, y = fa.get_tensor(k), fb.get_tensor(k)
            assert x.dtype == y.dtype and torch.equal(x, y), k


@pytest.mark.slow
def test_retraining_reproduces_shipped_files_bit_for_bit(tmp_path):
    # About a minute on an idle core: the training command (pinned kernels, one thread).
    store.train_in_subprocess(["vgg_clean"], tmp_path)
    shipped = store.WEIGHTS_DIR / "vgg_clean"
    for path in (store.weights_path, store.trajectory_path):
        _same_file_content(path(tmp_path / "vgg_clean"), path(shipped))
    new = json.loads(store.json_path(tmp_path / "vgg_clean").read_text())
    assert new["weights_sha256"] == ORIGINALS["vgg_clean"][1]
