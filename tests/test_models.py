"""Model builders: every kind maps digits- and CIFAR-shaped images to (n, n_out), is reproducible from its seed,
ends in a dense layer, and rejects bad options with an error naming the argument."""
import pytest
import torch
from torch import nn

import flatcomp_tutorial as fc
from flatcomp_tutorial import sharpness
from flatcomp_tutorial.layers import dense_layers



DIGITS, CIFAR = (1, 8, 8), (3, 32, 32)
CASES = [  # (kind, input_shape, options)
    ("mlp", DIGITS, dict(width=8)),
    ("mlp", CIFAR, dict(width=8, depth=1)),
    ("lenet", DIGITS, dict(channels=(2, 3), width=8)),
    ("lenet", CIFAR, dict(channels=(2, 3), width=8)),
    ("vgg", DIGITS, dict()),
    ("vgg", CIFAR, dict(cfg=[4, "M", 4, "M", 8, "M"], hidden=(8,))),
    ("vit", DIGITS, dict()),
    ("vit", DIGITS, dict(patch=2, pool="mean")),
    ("vit", CIFAR, dict(patch=8, dim=16, depth=1, heads=2)),
]


@pytest.mark.parametrize("kind, shape, options", CASES, ids=lambda v: str(v))
def test_every_kind_maps_images_to_n_out_outputs_and_ends_in_a_dense_layer(kind, shape, options):
    m = fc.make_model(kind, shape, 3, **options)
    assert m(torch.randn(4, *shape)).shape == (4, 3)
    name, last = dense_layers(m)[-1]
    assert last.out_features == 3 and [mod for mod in m.modules() if isinstance(mod, nn.Linear)][-1] is last


@pytest.mark.parametrize("kind", ["vgg", "vit"])
def test_same_seed_same_weights_other_seed_other_weights(kind):
    a, b, c = (fc.make_model(kind, DIGITS, 2, seed=s) for s in (1, 1, 2))
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not all(torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters()))


def test_building_a_model_leaves_the_global_random_state_alone():
    torch.manual_seed(0)
    before = torch.rand(1)
    torch.manual_seed(0)
    fc.make_model("vit", DIGITS, 2, seed=5)
    assert torch.equal(torch.rand(1), before)


def test_vgg11_has_the_papers_layout_and_no_batchnorm_by_default():
    m = fc.make_model("vgg", CIFAR, 2, cfg="vgg11", hidden=())
    convs = [l.out_channels for l in m.modules() if isinstance(l, nn.Conv2d)]
    assert convs == [64, 128, 256, 256, 512, 512, 512, 512]
    assert sum(isinstance(l, nn.MaxPool2d) for l in m.modules()) == 5
    assert not any(isinstance(l, nn.BatchNorm2d) for l in m.modules())
    assert dense_layers(m)[-1][1].in_features == 512
    assert [l.out_channels for l in fc.make_model("vgg", CIFAR, 2, depth=11).modules()
            if isinstance(l, nn.Conv2d)] == convs


def test_vgg_batch_norm_option_adds_one_batchnorm_per_convolution():
    m = fc.make_model("vgg", DIGITS, 2, batch_norm=True)
    assert sum(isinstance(l, nn.BatchNorm2d) for l in m.modules()) == sum(isinstance(l, nn.Conv2d) for l in m.modules()) == 2


def test_vit_class_token_and_mean_pooling_give_different_functions():
    x = torch.randn(5, *DIGITS)
    a = fc.make_model("vit", DIGITS, 2, pool="cls")
    b = fc.make_model("vit", DIGITS, 2, pool="mean")
    assert a.cls is not None and b.cls is None
    assert not torch.allclose(a(x), b(x))


def test_vit_attention_is_permutation_equivariant_over_tokens_without_positions():
    m = fc.make_model("vit", DIGITS, 2, patch=4, pool="mean").eval()
    with torch.no_grad():
        m.pos.zero_()
        x = torch.randn(3, *DIGITS)
        swapped = torch.cat([x[..., 4:, :], x[..., :4, :]], dim=-2)  # permute the 2x2 grid of 4x4 patches
        assert torch.allclose(m(x), m(swapped), atol=1e-5)


def test_vit_works_with_torch_func_hessian_vector_products():
    m = fc.make_model("vit", DIGITS, 2, dim=8, heads=2, depth=1, dtype=torch.float64)
    x, y = torch.randn(6, *DIGITS, dtype=torch.float64), torch.eye(2, dtype=torch.float64)[torch.arange(6) % 2]
    lam = sharpness.top_hessian_eigenvalues(m, x, y, k=1)
    assert torch.isfinite(torch.as_tensor(lam)).all()


@pytest.mark.parametrize("kind, options, match", [
    ("vgg", dict(cfg="vgg11"), "more 'M'"),
    ("vgg", dict(cfg="vgg99"), "cfg must be"),
    ("vgg", dict(cfg=[8, "X"]), "cfg entries must be"),
    ("vgg", dict(depth=7), "depth must be one of"),
    ("vit", dict(patch=3), "patch must divide"),
    ("vit", dict(dim=30, heads=4), "dim must be a positive multiple of heads"),
    ("vit", dict(pool="max"), "pool must be"),
    ("vit", dict(activation="swish"), "activation must be one of"),
])
def test_bad_options_raise_value_errors_naming_the_option(kind, options, match):
    with pytest.raises(ValueError, match=match):
        fc.make_model(kind, DIGITS, 2, **options)


@pytest.mark.parametrize("kind", ["vgg", "vit"])
def test_image_models_reject_vector_inputs(kind):
    with pytest.raises(ValueError, match=f"{kind} needs image inputs"):
        fc.make_model(kind, (64,), 2)


def test_models_built_in_several_threads_at_once_get_the_weights_of_their_seed():
    """A thread-pool sweep builds models concurrently; torch's default generator is shared by the threads."""
    from concurrent.futures import ThreadPoolExecutor

    def build(seed):
        return fc.make_model("mlp", (1, 8, 8), 10, width=256, depth=3, seed=seed)

    want = {s: torch.cat([p.detach().flatten() for p in build(s).parameters()]) for s in range(4)}
    with ThreadPoolExecutor(max_workers=4) as pool:
        built = list(pool.map(build, [s for _ in range(10) for s in range(4)]))
    for i, model in enumerate(built):
        assert torch.equal(torch.cat([p.detach().flatten() for p in model.parameters()]), want[i % 4])


@pytest.mark.parametrize("dtype", ["float64", "torch.float64", torch.float64])
def test_make_model_takes_a_floating_dtype_or_its_name(dtype):
    model = fc.make_model("mlp", (1, 8, 8), 2, width=4, seed=0, dtype=dtype)
    assert all(p.dtype == torch.float64 for p in model.parameters())


@pytest.mark.parametrize("dtype", ["int64", "double precision", torch.int32])
def test_make_model_refuses_a_dtype_that_is_not_floating(dtype):
    with pytest.raises(ValueError, match="dtype must be a floating torch dtype"):
        fc.make_model("mlp", (1, 8, 8), 2, width=4, seed=0, dtype=dtype)
