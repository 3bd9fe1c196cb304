"""Figures: built outside pyplot, so importing or using captum_global.viz leaves matplotlib's global state alone."""
import json
import subprocess
import sys

import torch

from captum_global import viz


def test_import_does_not_switch_the_backend():
    # A fresh interpreter that chose its own backend keeps it after importing viz.
    code = (
        "import json, matplotlib; matplotlib.use('pdf'); "
        "import matplotlib.pyplot as plt; import captum_global.viz; "
        "print(json.dumps([matplotlib.get_backend(), plt.get_backend()]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == ["pdf", "pdf"]


def test_figures_stay_out_of_pyplot_and_save(tmp_path):
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    images = torch.rand(2, 3, 12, 12)
    maps = torch.zeros(2, 1, 12, 12)
    maps[0, 0, :4, :4] = 1.0
    figures = [
        viz.explanation_gallery(images, {"m": maps}, boxes=torch.tensor([[0, 0, 4, 4], [2, 2, 6, 6]]),
                                row_titles=["a", "b"], scores={"m": {"EBPG": [1.0, 0.0]}}, title="t"),
        viz.class_map_grid({"model": torch.rand(3, 3, 12, 12)}, ["x", "y", "z"],
                           highlight=torch.ones(12, 12, dtype=torch.bool)),
        viz.synthetic_set_grid(torch.rand(2, 3, 3, 12, 12), ["x", "y"]),
    ]
    assert plt.get_fignums() == before
    # the all-zero map of image 1 is drawn as the plain image and captioned so (Captum would divide by 0)
    assert figures[0].axes[3].get_title().endswith("(empty map)")
    assert "EBPG 1.00" in figures[0].axes[1].get_title()
    assert [len(f.axes) for f in figures] == [4, 3, 6]
    for i, fig in enumerate(figures):
        path = tmp_path / f"f{i}.png"
        viz.save(fig, path)
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plt.get_fignums() == before
