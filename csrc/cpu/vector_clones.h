// RESNET_FUSED_VECTOR_CLONES: compile a hot loop for AVX-512 and AVX2 as well as the build's
// baseline ISA, the copy picked once at load time from the CPU's features (function
// multiversioning through an ifunc). The extension is built for baseline x86-64 (SSE2) so that
// one wheel runs everywhere; without this its plain loops would vectorize 4 floats wide on a CPU
// that does 16. Only where ifuncs exist (Linux, GCC/Clang, x86-64); elsewhere: baseline only.
#pragma once

#if defined(__x86_64__) && defined(__linux__) && (defined(__GNUC__) || defined(__clang__)) && \
    !defined(RESNET_FUSED_NO_VECTOR_CLONES)
#define RESNET_FUSED_VECTOR_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define RESNET_FUSED_VECTOR_CLONES
#endif
