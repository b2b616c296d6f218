"""The loss convention, written once (flatcomp_tutorial.losses): ½ Σ over outputs, mean over samples."""
import pytest
import torch

from flatcomp_tutorial import losses


def test_mse_per_sample_is_half_the_sum_over_outputs():
    out, y = torch.tensor([[1.0, 2.0], [0.0, 0.0]]), torch.tensor([[0.0, 0.0], [3.0, 1.0]])
    torch.testing.assert_close(losses.per_sample_loss(out, y), torch.tensor([2.5, 5.0]))


def test_mean_loss_is_the_mean_of_the_per_sample_losses():
    g = torch.Generator().manual_seed(0)
    out, y = torch.randn(7, 3, generator=g, dtype=torch.float64), torch.randn(7, 3, generator=g, dtype=torch.float64)
    for loss in losses.LOSSES:
        target = y if loss == "mse" else y.argmax(1)
        mean = losses.per_sample_loss(out, target, loss).mean()
        torch.testing.assert_close(losses.mean_loss(out, target, loss), mean, rtol=1e-14, atol=0.0)


def test_cross_entropy_takes_labels_or_one_hot_targets():
    out = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
    labels = torch.tensor([0, 2])
    one_hot = torch.nn.functional.one_hot(labels, 3).float()
    torch.testing.assert_close(losses.per_sample_loss(out, labels, "cross_entropy"),
                               losses.per_sample_loss(out, one_hot, "cross_entropy"))
    torch.testing.assert_close(losses.per_sample_loss(out, labels, "cross_entropy"),
                               -torch.log_softmax(out, 1)[torch.arange(2), labels])


def test_an_unknown_loss_is_refused_naming_the_choices():
    with pytest.raises(ValueError, match=r"loss must be one of \('mse', 'cross_entropy'\)"):
        losses.mean_loss(torch.zeros(2, 2), torch.zeros(2, 2), "hinge")
