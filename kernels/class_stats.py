"""Class statistics for ACM in one fused Triton kernel: centroids, radii, centroid distances, ACM.

Inputs are an embedding ``z`` (N, D) and ``class_idx`` (N,) int32 with values in 0..K-1 for the
samples that take part and -1 for those that do not. The formula (DESIGN.md section 1)::

    mu_k       = mean_{n in S_k} z_n
    r_k        = mean | rms | max over n in S_k of ||z_n - mu_k||_2
    D(i, j)    = ||mu_i - mu_j||_2
    ACM        = 1/(K(K-1)) * sum_{i != j} D(i, j) / (r_i + r_j)

The kernel is a single program (one CTA): the statistics are tiny (K x D) next to the N x D read,
and one program needs no grid-wide synchronisation between the three phases. Each phase reads
what the previous one stored, so a ``debug_barrier`` (a CTA barrier) separates them.
Class membership is a one-hot (K x N) tile, so per-class sums and the gather of each sample's
centroid are small matrix products (``tl.dot`` with IEEE fp32 precision, not TF32).

``class_stats_reference`` is the same computation in plain torch. Which of the two runs is the
fast path ``class-stats`` (st_fast.cluster.stats, through st_fast.backends).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from . import TRITON_AVAILABLE

RADIUS_KINDS = ("mean", "rms", "max")
MAX_KERNEL_CLASSES = 128  # the K x K tile lives in registers; larger K uses the torch path


class ClassStats(NamedTuple):
    acm: torch.Tensor  # () float32
    centroids: torch.Tensor  # (K, D)
    radii: torch.Tensor  # (K,)
    distances: torch.Tensor  # (K, K) centroid distances
    counts: torch.Tensor  # (K,) samples per class


# ---------------------------------------------------------------------------------------------
# torch reference
# ---------------------------------------------------------------------------------------------


def class_stats_reference(
    z: torch.Tensor, class_idx: torch.Tensor, num_classes: int, radius: str = "mean"
) -> ClassStats:
    """Plain torch (float32 in, float32 out); samples with ``class_idx == -1`` are ignored."""
    if radius not in RADIUS_KINDS:
        raise ValueError(f"radius must be one of {RADIUS_KINDS}, got {radius!r}")
    z = z.float()
    keep = class_idx >= 0
    zk, ck = z[keep], class_idx[keep].long()
    K = num_classes
    counts = torch.bincount(ck, minlength=K).to(z.dtype)
    centroids = torch.zeros(K, z.shape[1], dtype=z.dtype, device=z.device)
    centroids.index_add_(0, ck, zk)
    centroids /= counts[:, None]
    dist_to_own = (zk - centroids[ck]).norm(dim=1)
    radii = torch.zeros(K, dtype=z.dtype, device=z.device)
    if radius == "max":
        radii.scatter_reduce_(0, ck, dist_to_own, reduce="amax", include_self=True)
    elif radius == "rms":
        radii.index_add_(0, ck, dist_to_own.square()).div_(counts).sqrt_()
    else:
        radii.index_add_(0, ck, dist_to_own).div_(counts)
    distances = torch.cdist(centroids[None], centroids[None])[0]
    distances.fill_diagonal_(0.0)
    ratio = distances / (radii[:, None] + radii[None, :])
    ratio.fill_diagonal_(0.0)
    acm = ratio.sum() / (K * (K - 1))
    return ClassStats(acm, centroids, radii, distances, counts)


# ---------------------------------------------------------------------------------------------
# Triton kernel
# ---------------------------------------------------------------------------------------------

if TRITON_AVAILABLE:
    import triton
    import triton.language as tl

    @triton.jit
    def _class_stats_kernel(
        Z,  # (N, D) float32, row stride stride_z
        CLS,  # (N,) int32 class index or -1
        CENTROIDS,  # (K, D) float32 out
        RADII,  # (K,) out
        DIST,  # (K, K) out
        COUNTS,  # (K,) out
        ACM,  # (1,) out
        N,
        D,
        K,
        stride_z,
        RADIUS_KIND: tl.constexpr,  # 0 mean, 1 rms, 2 max
        BLOCK_N: tl.constexpr,
        BLOCK_D: tl.constexpr,
        BLOCK_K: tl.constexpr,
    ):
        offs_k = tl.arange(0, BLOCK_K)
        offs_kc = tl.arange(0, BLOCK_K)
        offs_d0 = tl.arange(0, BLOCK_D)
        offs_n0 = tl.arange(0, BLOCK_N)
        k_mask = offs_k < K

        # Phase 1: class counts and centroids, one D-block at a time.
        counts = tl.zeros([BLOCK_K], dtype=tl.float32)
        for n0 in range(0, N, BLOCK_N):
            offs_n = n0 + offs_n0
            cls = tl.load(CLS + offs_n, mask=offs_n < N, other=-1)
            counts += tl.sum((offs_k[:, None] == cls[None, :]).to(tl.float32), axis=1)
        inv_counts = 1.0 / tl.maximum(counts, 1.0)
        tl.store(COUNTS + offs_k, counts, mask=k_mask)
        for d0 in range(0, D, BLOCK_D):
            offs_d = d0 + offs_d0
            sums = tl.zeros([BLOCK_K, BLOCK_D], dtype=tl.float32)
            for n0 in range(0, N, BLOCK_N):
                offs_n = n0 + offs_n0
                n_mask = offs_n < N
                cls = tl.load(CLS + offs_n, mask=n_mask, other=-1)
                onehot_t = (offs_k[:, None] == cls[None, :]).to(tl.float32)  # (K, N)
                zb = tl.load(
                    Z + offs_n[:, None] * stride_z + offs_d[None, :],
                    mask=n_mask[:, None] & (offs_d[None, :] < D),
                    other=0.0,
                )
                sums += tl.dot(onehot_t, zb, input_precision="ieee")
            tl.store(
                CENTROIDS + offs_k[:, None] * D + offs_d[None, :],
                sums * inv_counts[:, None],
                mask=k_mask[:, None] & (offs_d[None, :] < D),
            )
        tl.debug_barrier()

        # Phase 2: each sample's distance to its own centroid, reduced per class into radii.
        rad_acc = tl.zeros([BLOCK_K], dtype=tl.float32)
        for n0 in range(0, N, BLOCK_N):
            offs_n = n0 + offs_n0
            n_mask = offs_n < N
            cls = tl.load(CLS + offs_n, mask=n_mask, other=-1)
            member = cls[:, None] == offs_kc[None, :]  # (N, K)
            onehot = member.to(tl.float32)
            sq = tl.zeros([BLOCK_N], dtype=tl.float32)
            for d0 in range(0, D, BLOCK_D):
                offs_d = d0 + offs_d0
                d_mask = offs_d < D
                zb = tl.load(
                    Z + offs_n[:, None] * stride_z + offs_d[None, :],
                    mask=n_mask[:, None] & d_mask[None, :],
                    other=0.0,
                )
                mu = tl.load(
                    CENTROIDS + offs_kc[:, None] * D + offs_d[None, :],
                    mask=(offs_kc[:, None] < K) & d_mask[None, :],
                    other=0.0,
                )
                own = tl.dot(onehot, mu, input_precision="ieee")  # (N, D): mu of each sample
                diff = tl.where((cls >= 0)[:, None], zb - own, 0.0)
                sq += tl.sum(diff * diff, axis=1)
            if RADIUS_KIND == 1:
                contrib = sq
            else:
                contrib = tl.sqrt(sq)
            if RADIUS_KIND == 2:
                rad_acc = tl.maximum(
                    rad_acc, tl.max(tl.where(member, contrib[:, None], 0.0), axis=0)
                )
            else:
                rad_acc += tl.sum(tl.where(member, contrib[:, None], 0.0), axis=0)
        if RADIUS_KIND == 0:
            radii = rad_acc * inv_counts
        elif RADIUS_KIND == 1:
            radii = tl.sqrt(rad_acc * inv_counts)
        else:
            radii = rad_acc
        tl.store(RADII + offs_kc, radii, mask=offs_kc < K)
        tl.debug_barrier()

        # Phase 3: centroid distances and the ACM ratio sum.
        sqd = tl.zeros([BLOCK_K, BLOCK_K], dtype=tl.float32)
        for d0 in range(0, D, BLOCK_D):
            offs_d = d0 + offs_d0
            d_mask = offs_d < D
            mu_i = tl.load(
                CENTROIDS + offs_k[:, None] * D + offs_d[None, :],
                mask=k_mask[:, None] & d_mask[None, :],
                other=0.0,
            )
            for j in range(0, K):
                mu_j = tl.load(CENTROIDS + j * D + offs_d, mask=d_mask, other=0.0)
                diff = mu_i - mu_j[None, :]
                col = tl.sum(diff * diff, axis=1)  # (K,): squared distance of every i to j
                sqd += tl.where(offs_kc[None, :] == j, col[:, None], 0.0)
        dist = tl.sqrt(sqd)
        pair = k_mask[:, None] & (offs_kc[None, :] < K) & (offs_k[:, None] != offs_kc[None, :])
        dist = tl.where(pair, dist, 0.0)
        kk_mask = k_mask[:, None] & (offs_kc[None, :] < K)
        tl.store(DIST + offs_k[:, None] * K + offs_kc[None, :], dist, mask=kk_mask)
        r_i = tl.load(RADII + offs_k, mask=k_mask, other=1.0)
        r_j = tl.load(RADII + offs_kc, mask=offs_kc < K, other=1.0)
        ratio = tl.where(pair, dist / (r_i[:, None] + r_j[None, :]), 0.0)
        total = tl.sum(tl.sum(ratio, axis=1), axis=0)
        tl.store(ACM, total / (K * (K - 1)).to(tl.float32))


def _pow2_at_least(x: int, floor: int) -> int:
    return max(floor, 1 << max(0, int(x) - 1).bit_length())


def class_stats_triton(
    z: torch.Tensor, class_idx: torch.Tensor, num_classes: int, radius: str = "mean"
) -> ClassStats:
    """Launch the fused kernel (one program). ``z`` is upcast to contiguous float32."""
    if radius not in RADIUS_KINDS:
        raise ValueError(f"radius must be one of {RADIUS_KINDS}, got {radius!r}")
    if num_classes > MAX_KERNEL_CLASSES:
        raise ValueError(f"the fused kernel handles at most {MAX_KERNEL_CLASSES} classes")
    z = z.float().contiguous()
    cls = class_idx.to(device=z.device, dtype=torch.int32).contiguous()
    N, D = z.shape
    K = num_classes
    out = torch.empty(K * D + K + K * K + K + 1, dtype=torch.float32, device=z.device)
    centroids = out[: K * D].view(K, D)
    radii = out[K * D : K * D + K]
    distances = out[K * D + K : K * D + K + K * K].view(K, K)
    counts = out[K * D + K + K * K : K * D + 2 * K + K * K]
    acm = out[-1:]
    block_d = min(_pow2_at_least(D, 16), 64)
    _class_stats_kernel[(1,)](
        z, cls, centroids, radii, distances, counts, acm,
        N, D, K, z.stride(0),
        RADIUS_KIND=RADIUS_KINDS.index(radius),
        BLOCK_N=64 if block_d <= 32 else 32,
        BLOCK_D=block_d,
        BLOCK_K=_pow2_at_least(K, 16),
    )  # fmt: skip
    return ClassStats(acm[0], centroids, radii, distances, counts)

