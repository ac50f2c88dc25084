//! Data parallelism for the CPU kernels: rayon's workers natively, one thread on wasm.

/// Elements per parallel task for elementwise and row-wise passes: a 2,560 x 2,048 memory-build
/// activation is 80 tasks, a decoding step's few thousand elements one (waking a worker would
/// cost more than it saves).
pub(crate) const TASK_ELEMENTS: usize = 1 << 16;

/// `f((i, chunk))` for each `len`-long chunk of `data`: on rayon's workers natively, in order on
/// wasm (no threads there).
pub(crate) fn for_each_chunk(data: &mut [f32], len: usize, f: impl Fn((usize, &mut [f32])) + Send + Sync) {
    #[cfg(not(target_family = "wasm"))]
    {
        use rayon::prelude::*;
        data.par_chunks_mut(len).enumerate().for_each(f);
    }
    #[cfg(target_family = "wasm")]
    data.chunks_mut(len).enumerate().for_each(f);
}

/// `f(i)` for each `i` in `0..n`: on rayon's workers natively, in order on wasm.
pub(crate) fn for_each_index(n: usize, f: impl Fn(usize) + Send + Sync) {
    #[cfg(not(target_family = "wasm"))]
    {
        use rayon::prelude::*;
        (0..n).into_par_iter().for_each(f);
    }
    #[cfg(target_family = "wasm")]
    (0..n).for_each(f);
}

/// Worker threads the kernels split their work between.
pub(crate) fn threads() -> usize {
    #[cfg(not(target_family = "wasm"))]
    return rayon::current_num_threads();
    #[cfg(target_family = "wasm")]
    1
}
