"""Specification of flatcomp_tutorial.layers: dense layers, weight keys, and one meaning of a layer index
(h_l, the input of dense layer l+1) whether it is a source or a target."""
import pytest
import torch
from problems import inputs, lenet, mlp
from torch import nn

from flatcomp_tutorial import layers


def test_dense_layers_are_the_linear_modules_in_forward_order():
    model = mlp(depth=2)
    assert [m for _, m in layers.dense_layers(model)] == [m for m in model if isinstance(m, nn.Linear)]
    assert layers.n_dense(model) == 3


def test_a_model_without_dense_layers_is_refused_for_layer_indexed_measures():
    with pytest.raises(ValueError, match="no nn.Linear"):
        layers.n_dense(nn.Sequential(nn.Tanh()))


def test_a_dense_layer_is_found_by_one_based_index_or_by_name():
    model = mlp(depth=2)
    name, lin = layers.dense_layer(model, 2)
    assert layers.dense_layer(model, name) == (name, lin) and lin is dict(model.named_modules())[name]


@pytest.mark.parametrize("bad", [0, 4, "9", 1.0, True])
def test_a_bad_layer_is_refused_with_the_valid_range_and_names(bad):
    with pytest.raises(ValueError, match="1-based"):
        layers.dense_layer(mlp(depth=2), bad)


def test_weight_keys_match_named_parameters():
    model = mlp(depth=1)
    keys = dict(model.named_parameters())
    assert all(layers.weight_key(name) in keys for name, _ in layers.dense_layers(model))
    assert layers.weight_key("") == "weight"


def test_the_first_layer_of_an_mlp_is_dense_and_of_a_cnn_is_not():
    assert layers.first_layer_is_dense(mlp()) and not layers.first_layer_is_dense(lenet())


def test_a_layer_index_names_the_same_point_as_source_and_as_target():
    model = mlp(depth=2)
    for l in range(3):
        assert layers.source_point(model, l) == layers.target_point(model, l) == (l + 1, "in")
    assert layers.target_point(model, 3) is layers.target_point(model, "output") is None
    assert layers.source_point(model, "input") is None


@pytest.mark.parametrize("role, bad", [("source", 3), ("source", "output"), ("target", 4), ("target", "input"),
                                       ("source", -1)])
def test_points_outside_the_network_are_refused(role, bad):
    fn = layers.source_point if role == "source" else layers.target_point
    with pytest.raises(ValueError, match=role):
        fn(mlp(depth=2), bad)


def test_a_source_must_come_before_its_target():
    layers.check_order(None, (1, "in"))
    with pytest.raises(ValueError, match="before target"):
        layers.check_order((2, "in"), (2, "in"))


def test_the_hooked_forward_captures_h_l_and_replaces_it():
    model, x = mlp(depth=2), inputs(4, 5)
    h1 = layers.values_at(model, x, (2, "in"))
    # flatten, W_1, tanh computed by the same modules through another call path: float64 round-off level
    torch.testing.assert_close(h1, model[:3](x), rtol=1e-14, atol=1e-15)
    out = layers.hooked_forward(model, x, (2, "in"), None, h=h1)
    torch.testing.assert_close(out, model(x), rtol=1e-14, atol=1e-14)
    assert torch.equal(layers.values_at(model, x, None), x)
