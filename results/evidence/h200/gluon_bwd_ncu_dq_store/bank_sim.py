"""Shared-memory wavefronts of the fp32 dQ tile's 8-byte stores, computed: the wgmma accumulator's lanes (lane l
holds rows l // 4 and l // 4 + 8, columns 8 g + 2 (l % 4) and the next one, for each 8-column group g), the tile's
128-byte swizzle (16-byte unit XOR row mod 8, in 32-column blocks of 128-byte rows), and a warp's 8-byte store
served a half-warp at a time.  Prints the wavefronts a half-warp takes for the stores as the kernel writes them
(store i writes group i) and for the mapping the README proposes (odd rows write group i XOR 2)."""
from collections import defaultdict


def address(row: int, col: int) -> int:
    unit, offset = col // 4, (col * 4) % 16
    return row * 128 + (unit ^ (row % 8)) * 16 + offset


def wavefronts(group) -> float:
    total = n = 0
    for i in range(4):  # the stores of one 32-column block
        for half in (0, 1):
            for rows in (0, 8):  # the accumulator's two register pairs
                words = defaultdict(set)
                for lane in range(16 * half, 16 * half + 16):
                    r = lane // 4 + rows
                    col = 8 * group(i, r) + 2 * (lane % 4)
                    for k in (0, 1):
                        a = address(r, col + k)
                        words[(a // 4) % 32].add(a // 4)
                total += max(len(w) for w in words.values())
                n += 1
    return total / n


print("as the kernel stores (store i: group i):", wavefronts(lambda i, r: i), "wavefronts a half-warp")
print("odd rows store group i ^ 2:", wavefronts(lambda i, r: i ^ (2 * (r & 1))), "wavefronts a half-warp")
