"""captum_global in other explainability tools.

- :mod:`captum_global.integrations.quantus`: :func:`~captum_global.integrations.quantus.explain`,
  an ``explain_func`` for quantus metrics that runs any captum_global or
  Captum attribution by name or object.
- :mod:`captum_global.integrations.grad_cam`:
  :class:`~captum_global.integrations.grad_cam.AttributionCAM`, any
  attribution where pytorch-grad-cam expects a CAM object (its target
  callables and metrics included), and
  :func:`~captum_global.integrations.grad_cam.attributions_to_cams`.

Neither tool is imported here: quantus is only called back, and
grad-cam's target classes are recognised when it is installed.
"""
from captum_global.integrations.grad_cam import AttributionCAM, attributions_to_cams
from captum_global.integrations.quantus import InputAgnosticWarning, explain

__all__ = ["explain", "InputAgnosticWarning", "AttributionCAM", "attributions_to_cams"]
