"""Hot loops of the vertebra segmentation, compiled with numba (cached on disk)."""

from __future__ import annotations

import heapq

import numpy as np
from numba import njit


@njit(cache=True)
def dijkstra_labels(cost, mask, lab, offs, steps):
    """Multi-source Dijkstra on a 3-D grid: every reachable mask voxel gets the label of its
    cheapest seed (``lab > 0`` marks seeds). Edge cost = step length x mean voxel cost."""
    nx, ny, nz = mask.shape
    dist = np.full(mask.shape, np.inf)
    out = lab.copy()
    heap = [(0.0, 0, 0, 0)]
    heap.pop()
    for i in range(nx):
        for j in range(ny):
            for k in range(nz):
                if lab[i, j, k] > 0:
                    dist[i, j, k] = 0.0
                    heap.append((0.0, i, j, k))
    heapq.heapify(heap)
    no = offs.shape[0]
    while len(heap) > 0:
        d, i, j, k = heapq.heappop(heap)
        if d > dist[i, j, k]:
            continue
        li = out[i, j, k]
        ci = cost[i, j, k]
        for n in range(no):
            a = i + offs[n, 0]
            b = j + offs[n, 1]
            c = k + offs[n, 2]
            if a < 0 or b < 0 or c < 0 or a >= nx or b >= ny or c >= nz:
                continue
            if not mask[a, b, c]:
                continue
            nd = d + steps[n] * 0.5 * (ci + cost[a, b, c])
            if nd < dist[a, b, c]:
                dist[a, b, c] = nd
                out[a, b, c] = li
                heapq.heappush(heap, (nd, a, b, c))
    return out
