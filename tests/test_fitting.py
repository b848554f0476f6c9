"""The test-only head fitting (:mod:`fitting`) computes the heads as matrix products over unfolded feature maps: it
must give what the heads' own convolutions give, and train them the same way."""
import numpy as np
import oneflow as flow

from fitting import _unfolded, head_outputs


def test_unfolded_heads_equal_the_heads_and_their_gradients(tiny):
    flow.manual_seed(1)
    features = [flow.randn(3, c, s, s) for c, s in zip(tiny.backbone.out_channels, (8, 4, 2))]
    grid_sizes = [tuple(f.shape[-2:]) for f in features]
    index = flow.tensor([2, 0], dtype=flow.int64)
    results = []
    for compute in (lambda: tiny.head([f[index] for f in features]),
                    lambda: head_outputs(tiny.head, [flow.index_select(u, 0, index) for u in _unfolded(features)],
                                         grid_sizes)):
        tiny.zero_grad()
        out = compute()
        (out["cls_logits"].square().sum() + out["bbox_regression"].sum()).backward()
        results.append([out["cls_logits"].numpy(), out["bbox_regression"].numpy()]
                       + [p.grad.numpy() for p in tiny.head.parameters()])
    # 8x8 cells with 4 default boxes, 4x4 with 6, 2x2 with 4: 368 per image.
    assert results[0][0].shape == (2, 368, 5) and results[0][1].shape == (2, 368, 4)
    for want, got in zip(*results):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
