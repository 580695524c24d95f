"""Edge cases of the sm_90a CUTLASS conv: run on the GPU (tests/test_cuda_sm90.py) and planned on
any machine (tests/test_sm90_plan.py), so a case the plan refuses fails on the CPU first.

(input size, weight size, stride, padding, residual, relu, layout of the operands)
"""

SM90_EDGE_CASES = [
    ((1, 64, 56, 56), (256, 64, 1, 1), (1, 1), (0, 0), True, False, "cl"),  # N = 1
    ((3, 64, 15, 13), (64, 64, 3, 3), (1, 1), (1, 1), True, True, "cl"),  # odd H/W, residual
    ((2, 128, 15, 17), (128, 128, 3, 3), (2, 2), (1, 1), False, True, "contig"),  # odd, s2
    ((2, 20, 9, 11), (24, 20, 3, 3), (1, 1), (1, 1), True, True, "cl"),  # C = 20 -> 24
    ((2, 3, 31, 29), (64, 3, 7, 7), (2, 2), (3, 3), False, True, "contig"),  # stem, odd H/W
    ((1, 5, 7, 7), (8, 5, 3, 3), (1, 1), (1, 1), False, False, "contig"),  # C = 5: stem family
    ((2, 16, 10, 9), (32, 16, 3, 1), (1, 2), (0, 1), True, True, "contig"),  # R != S
    ((1, 8, 1, 1), (16, 8, 3, 3), (1, 1), (1, 1), False, True, "cl"),  # all padding but centre
    ((2, 256, 13, 13), (512, 256, 1, 1), (2, 2), (0, 0), False, False, "contig"),  # 1x1 s2 odd
    ((2, 40, 12, 10), (48, 40, 3, 3), (1, 1), (1, 1), True, True, "sliced"),  # non-dense input
    ((2, 32, 11, 9), (40, 32, 3, 3), (2, 2), (1, 1), True, True, "offset"),  # unaligned ptr
    ((6, 64, 47, 45), (200, 64, 3, 3), (1, 1), (1, 1), True, True, "cl"),  # M and N tails
    ((10, 32, 47, 45), (40, 32, 1, 1), (1, 1), (0, 0), True, False, "cl"),  # N tail of 64
]
