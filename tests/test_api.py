"""The public surface: one name, one thing. ``jaxconv`` and ``jaxconv.autodiff`` export the same
ops under the same names and signatures (so code written against one runs against the other);
``jaxconv.ops`` is the subpackage of op modules, nothing else; the losses carry optax's names."""

from __future__ import annotations

import importlib
import inspect
import types

import jaxconv
import jaxconv.autodiff

OPS = ["avg_pool", "conv", "conv1d", "conv2d", "conv3d", "conv_transpose", "dense", "dot_general",
       "leaky_relu", "max_pool",
       "relu", "sigmoid", "softmax_cross_entropy", "softmax_cross_entropy_with_integer_labels",
       "softplus", "squared_error", "tanh"]


def test_manual_and_autodiff_namespaces_match():
    assert sorted(jaxconv.autodiff.__all__) == OPS
    assert set(OPS) <= set(jaxconv.__all__)
    for name in OPS:
        manual, auto = getattr(jaxconv, name), getattr(jaxconv.autodiff, name)
        assert manual is not auto
        assert manual.__name__ == auto.__name__ == name
        assert inspect.signature(manual) == inspect.signature(auto), name
        assert manual.__doc__ == auto.__doc__ and manual.__doc__, name
    for name in jaxconv.__all__:
        assert hasattr(jaxconv, name), name


def test_ops_is_the_subpackage_only():
    """``import jaxconv.ops as o`` gives the package of op modules (no function shadows it)."""
    ops = importlib.import_module("jaxconv.ops")
    assert jaxconv.ops is ops and isinstance(ops, types.ModuleType)
    assert "ops" not in jaxconv.__all__
    assert not hasattr(jaxconv, "OPS")
    assert not any(hasattr(getattr(jaxconv, name), "grads") for name in OPS)


def test_losses_have_optax_names_and_signatures():
    params = {name: list(inspect.signature(getattr(jaxconv, name)).parameters) for name in
              ("softmax_cross_entropy", "softmax_cross_entropy_with_integer_labels",
               "squared_error")}
    assert params == {"softmax_cross_entropy": ["logits", "labels"],
                      "softmax_cross_entropy_with_integer_labels": ["logits", "labels"],
                      "squared_error": ["predictions", "targets"]}
    assert not hasattr(jaxconv, "mse")


def test_pool_options_are_keyword_only_like_conv():
    for name in ("max_pool", "avg_pool", "conv"):
        sig = inspect.signature(getattr(jaxconv, name))
        keyword_only = [p.name for p in sig.parameters.values() if p.kind is p.KEYWORD_ONLY]
        assert {"stride", "padding", "layout"} <= set(keyword_only), name
