"""Backdoor scans: find the class a planted trigger flips inputs to, and the trigger.

- :func:`scan_for_backdoor`: the input-agnostic scan of this package.
- :func:`neural_cleanse` / :class:`NeuralCleanse`: Neural Cleanse (Wang et
  al., S&P 2019), the reference scan.
- :class:`BackdoorScan`: the result both return; :func:`scan_figure` draws it.
"""
from captum_global.backdoor.cleanse import NeuralCleanse, neural_cleanse
from captum_global.backdoor.figure import scan_figure
from captum_global.backdoor.result import BackdoorScan
from captum_global.backdoor.scan import scan_for_backdoor

__all__ = ["BackdoorScan", "scan_for_backdoor", "NeuralCleanse", "neural_cleanse", "scan_figure"]
