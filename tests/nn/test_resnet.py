"""Batch norm from the equations vs torch, residual blocks, the vanishing gradient of deep plain nets."""

import math

import torch

from mlcanon.nn import BatchNorm2d, ResidualBlock, ResNet, deep_conv_net


def test_batch_norm_matches_torch_in_train_and_eval():
    torch.manual_seed(0)
    ours, ref = BatchNorm2d(3), torch.nn.BatchNorm2d(3)
    with torch.no_grad():
        ref.weight.uniform_(0.5, 2)
        ref.bias.normal_()
    ours.load_state_dict(ref.state_dict())  # same names and buffers
    for step in range(4):
        x = torch.randn(8, 3, 5, 5) * (step + 1) + step
        torch.testing.assert_close(ours(x), ref(x))
    torch.testing.assert_close(ours.running_mean, ref.running_mean)
    torch.testing.assert_close(ours.running_var, ref.running_var)
    assert ours.num_batches_tracked.item() == 4
    ours.eval()
    ref.eval()
    x = torch.randn(4, 3, 5, 5) * 3 + 1
    torch.testing.assert_close(ours(x), ref(x))


def test_batch_norm_train_vs_eval_statistics():
    torch.manual_seed(0)
    bn = BatchNorm2d(2)
    x = torch.randn(16, 2, 4, 4) * 5 + 3
    y = bn(x)  # train: normalized by the batch's own mean and variance
    torch.testing.assert_close(y.mean(dim=(0, 2, 3)), torch.zeros(2), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.var(dim=(0, 2, 3), unbiased=False), torch.ones(2), atol=1e-3, rtol=0)
    bn.eval()
    # eval: running statistics, so one sample's output does not depend on the rest of the batch
    torch.testing.assert_close(bn(x)[:1], bn(x[:1]))
    expected = (x - bn.running_mean.view(1, 2, 1, 1)) / torch.sqrt(bn.running_var.view(1, 2, 1, 1) + bn.eps)
    torch.testing.assert_close(bn(x), expected)


def test_residual_block_shapes_and_rescale():
    torch.manual_seed(0)
    x = torch.randn(2, 4, 8, 8)
    assert ResidualBlock(4, 4)(x).shape == (2, 4, 8, 8)
    assert ResidualBlock(4, 8, stride=2)(x).shape == (2, 8, 4, 4)
    a = ResidualBlock(4, 4, norm=False)
    b = ResidualBlock(4, 4, norm=False, rescale=True)
    b.load_state_dict(a.state_dict())
    # relu((F(x) + x) / sqrt(2)) = relu(F(x) + x) / sqrt(2) since relu is positively homogeneous
    torch.testing.assert_close(b(x), a(x) / math.sqrt(2))
    # with F = 0 the block is the identity on non-negative inputs
    with torch.no_grad():
        for p in a.parameters():
            p.zero_()
    torch.testing.assert_close(a(x.relu()), x.relu())


def test_plain_30_layer_gradient_vanishes_residual_does_not():
    grads = {}
    for residual in (False, True):
        torch.manual_seed(0)
        net = deep_conv_net(30, channels=4, residual=residual)
        x = torch.randn(2, 4, 6, 6)
        net(x).pow(2).mean().backward()
        grads[residual] = net[0].conv1.weight.grad.norm().item()
    assert grads[False] < 1e-8  # plain: the product of 30 Jacobians shrinks it to nothing
    assert grads[True] > 1e-2  # residual: the identity path carries it
    assert grads[True] > 1e6 * grads[False]


def test_resnet_classifier_learns_a_tiny_task():
    torch.manual_seed(0)
    x = torch.randn(32, 1, 6, 6)
    y = (x[:, 0, :, :3].mean((1, 2)) > x[:, 0, :, 3:].mean((1, 2))).long()  # brighter left half?
    net = ResNet(1, 2, width=4, stages=2, blocks_per_stage=1)
    assert net(x).shape == (32, 2)
    opt = torch.optim.Adam(net.parameters(), lr=2e-2)
    for _ in range(40):
        loss = torch.nn.functional.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    assert (net(x).argmax(1) == y).float().mean() >= 0.95
