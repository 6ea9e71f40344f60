"""Conversion to TFLite and the checks on the converted model (conformance, weights, host-side accuracy)."""
