"""Eigen-CAM: Muhammad & Yeasin 2020, "Eigen-CAM: Class Activation Map using Principal
Components" (IJCNN; arXiv:2008.00299)."""

from __future__ import annotations

import torch

from napari_vitcam.engine.explainers.base import LayerExplainer, LayerInputs


class EigenCAM(LayerExplainer):
    """The tokens' projection on the first principal component of the layer's activations.

    Per sample, with ``A`` (N tokens x E channels) centred over the tokens::

        A_c   = A - mean_t A_t
        A_c   = U S V^T                    (SVD)
        CAM_t = ReLU(s * A_c,t . v_1)      s = -1 when |min| > |max| of the projection, else 1

    Class-agnostic: no gradients, one forward pass. The sign of a singular
    vector is arbitrary; it is fixed so that the larger extreme is positive
    (Seg-Eigen-CAM's correction, Chung & Ying 2025, eq. 13), as
    pytorch-grad-cam's ``get_2d_projection_with_sign_correction`` does.
    """

    name = "eigencam"
    label = "Eigen-CAM"
    paper = "Muhammad & Yeasin 2020, Eigen-CAM: Class Activation Map using Principal Components"
    needs_gradients = False

    def token_map(self, inputs: LayerInputs) -> torch.Tensor:
        a = inputs.activations
        centred = a - a.mean(dim=1, keepdim=True)
        _, _, vh = torch.linalg.svd(centred.double(), full_matrices=False)
        projection = torch.einsum("bne,be->bn", centred.double(), vh[:, 0])
        flip = projection.amin(dim=1).abs() > projection.amax(dim=1).abs()
        projection = torch.where(flip[:, None], -projection, projection)
        return projection.to(a.dtype).relu_()
