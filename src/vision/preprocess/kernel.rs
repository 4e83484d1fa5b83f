//! The one kernel of both resampling passes: a weighted sum of byte vectors, rounded from fixed point
//! to bytes, for each instruction set it runs on.
//!
//! The portable kernel is plain Rust that the compiler vectorises, one tap at a time: per tap it
//! widens the bytes to 32 bits and multiplies them by the weight, 16 products per `pmaddwd` on
//! AVX-512 with half of each lane's pair wasted on zeros. Written out with pulp's safe intrinsics,
//! the x86-64 kernels take two taps per multiply-add instead (their bytes side by side in each lane,
//! the two weights packed into one 32-bit word), which halves the multiplies and adds of both passes;
//! no compiler finds that pairing on its own. The instruction set is detected at run time, so one
//! binary serves every x86-64 box; other CPUs (aarch64) run the portable kernel. Every kernel's
//! results are the portable one's exactly; the unit tests of the passes run each kernel the CPU has.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::{__m128i, __m256i, __m512i};

/// A weighted sum of byte vectors at a stride: what a pass computes for `16 * BLOCKS` output bytes.
pub(super) trait WeightedSums: Copy {
    /// Σ weights[k] x the `16 * BLOCKS` bytes at `k * stride` of `vectors`, rounded from fixed point
    /// with `precision` fractional bits to bytes, as `weighted_sum` computes it, in blocks of 16.
    /// Several blocks at once share each tap's weight and loop step.
    fn weighted_sums<const BLOCKS: usize>(
        self,
        vectors: &[u8],
        stride: usize,
        weights: &[i16],
        precision: u32,
    ) -> [[u8; 16]; BLOCKS];
}

/// A band of a pass, computed with whichever kernel the CPU runs best.
pub(super) trait Band {
    fn fill<K: WeightedSums>(self, kernel: K);
}

/// The kernels, best first; `detect` picks the best the CPU has.
#[derive(Clone, Copy)]
pub(super) enum Kernel {
    #[cfg(target_arch = "x86_64")]
    Avx512(pulp::x86::V4),
    #[cfg(target_arch = "x86_64")]
    Avx2(pulp::x86::V3),
    Portable,
}

impl std::fmt::Debug for Kernel {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(self.name())
    }
}

impl Kernel {
    /// The instruction set's name, as `lookout bench` reports it.
    pub(super) fn name(self) -> &'static str {
        match self {
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512(_) => "AVX-512",
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2(_) => "AVX2",
            Kernel::Portable => "portable",
        }
    }

    pub(super) fn detect() -> Kernel {
        Kernel::available()[0]
    }

    /// Every kernel this CPU can run, best first.
    pub(super) fn available() -> Vec<Kernel> {
        let mut kernels = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            kernels.extend(pulp::x86::V4::try_new().map(Kernel::Avx512));
            kernels.extend(pulp::x86::V3::try_new().map(Kernel::Avx2));
        }
        kernels.push(Kernel::Portable);
        kernels
    }

    /// Computes `band` with this kernel, the x86-64 ones compiled for their instruction sets.
    pub(super) fn fill(self, band: impl Band) {
        match self {
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512(simd) => fill_compiled_for(simd, band),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2(simd) => fill_compiled_for(simd, band),
            Kernel::Portable => band.fill(Portable),
        }
    }
}

/// `band` computed with `simd`'s kernel, all of it compiled for `simd`'s instruction set.
#[cfg(target_arch = "x86_64")]
fn fill_compiled_for<S: pulp::Simd + WeightedSums>(simd: S, band: impl Band) {
    simd.vectorize(
        #[inline(always)]
        || band.fill(simd),
    );
}

/// The kernel in plain Rust.
#[derive(Debug, Clone, Copy)]
pub(super) struct Portable;

/// One block at a time: summing more at once, the compiler kept the sums on the stack, stored and
/// reloaded at every tap, at half the speed.
impl WeightedSums for Portable {
    #[inline(always)]
    fn weighted_sums<const BLOCKS: usize>(
        self,
        vectors: &[u8],
        stride: usize,
        weights: &[i16],
        precision: u32,
    ) -> [[u8; 16]; BLOCKS] {
        let mut blocks = [[0; 16]; BLOCKS];
        for (index, block) in blocks.iter_mut().enumerate() {
            *block = weighted_sum(&vectors[16 * index..], stride, weights, precision);
        }
        blocks
    }
}

/// Σ weights[k] x the `N` bytes at `k * stride` of `vectors`, rounded from fixed point with `precision`
/// fractional bits to bytes. A byte and a weight both fit in 16 bits, so the compiler multiplies them
/// in 16-bit lanes into 32-bit sums.
#[inline(always)]
pub(super) fn weighted_sum<const N: usize>(
    vectors: &[u8],
    stride: usize,
    weights: &[i16],
    precision: u32,
) -> [u8; N] {
    let mut sums = [(1i32 << precision) >> 1; N];
    for (tap, weight) in weights.iter().enumerate() {
        let vector: &[u8; N] = vectors[tap * stride..][..N].try_into().expect("N bytes");
        for (sum, value) in sums.iter_mut().zip(vector) {
            *sum += i32::from(*value) * i32::from(*weight);
        }
    }
    // A loop, not `sums.map`: the compiler left that as a call, with the sums stored and reloaded.
    let mut out = [0u8; N];
    for (value, sum) in out.iter_mut().zip(sums) {
        *value = clip8(sum, precision);
    }
    out
}

/// A fixed-point sum with `precision` fractional bits as a byte: truncated, then clamped.
#[inline(always)]
pub(super) fn clip8(sum: i32, precision: u32) -> u8 {
    (sum >> precision).clamp(0, 255) as u8
}

/// Two taps' weights in one 32-bit word, as the pairwise multiply-add takes them: the first's in the
/// low half.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn packed(first: i16, second: i16) -> i32 {
    (u32::from(first as u16) | u32::from(second as u16) << 16) as i32
}

/// The 16 bytes at `at` of `vectors`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn bytes_16(vectors: &[u8], at: usize) -> __m128i {
    let bytes: [u8; 16] = vectors[at..][..16].try_into().expect("16 bytes");
    pulp::bytemuck::cast(bytes)
}

/// The 32 bytes at `at` of `vectors`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn bytes_32(vectors: &[u8], at: usize) -> __m256i {
    let bytes: [u8; 32] = vectors[at..][..32].try_into().expect("32 bytes");
    pulp::bytemuck::cast(bytes)
}

/// What the pairwise kernel needs of an x86-64 instruction set: the 32-bit sums of 16-byte blocks,
/// the multiply-add of a pair of taps into them, and their narrowing. Each instruction set lays out
/// its sums as its widest multiply-add makes them.
#[cfg(target_arch = "x86_64")]
trait PairwiseMultiplyAdd: pulp::Simd {
    /// Sixteen sums, a 16-byte block's worth. With AVX-512 two adjacent blocks share their two `Sums`
    /// out between them: see its implementation.
    type Sums: Copy;

    /// Every sum at `start`.
    fn sums(self, start: i32) -> Self::Sums;

    /// Adds both taps' first `16 * BLOCKS` bytes, weighted by the `packed` pair, to `sums`.
    fn add_pairs<const BLOCKS: usize>(
        self,
        sums: &mut [Self::Sums; BLOCKS],
        taps: (&[u8], &[u8]),
        weight: i32,
    );

    /// The sums shifted right by `precision` and clamped to bytes, as `clip8` does, in order.
    fn narrowed<const BLOCKS: usize>(
        self,
        sums: [Self::Sums; BLOCKS],
        precision: u32,
    ) -> [[u8; 16]; BLOCKS];
}

/// The x86-64 kernels: two taps per multiply-add. An odd last tap is paired with itself and a zero
/// weight, so nothing past the window is read. (Closures here would be compiled without the
/// instruction set, and the intrinsics in them not inlined: loops.)
#[cfg(target_arch = "x86_64")]
impl<S: PairwiseMultiplyAdd> WeightedSums for S {
    #[inline(always)]
    fn weighted_sums<const BLOCKS: usize>(
        self,
        vectors: &[u8],
        stride: usize,
        weights: &[i16],
        precision: u32,
    ) -> [[u8; 16]; BLOCKS] {
        let mut sums = [self.sums((1 << precision) >> 1); BLOCKS];
        let (pairs, last) = weights.as_chunks::<2>();
        for (pair, [first_weight, second_weight]) in pairs.iter().enumerate() {
            let rows = &vectors[2 * pair * stride..][..stride + 16 * BLOCKS];
            let weight = packed(*first_weight, *second_weight);
            self.add_pairs(&mut sums, (rows, &rows[stride..]), weight);
        }
        if let [weight] = last {
            let row = &vectors[2 * pairs.len() * stride..][..16 * BLOCKS];
            self.add_pairs(&mut sums, (row, row), packed(*weight, 0));
        }
        self.narrowed(sums, precision)
    }
}

/// AVX-512: two blocks at a time, both taps' 32 bytes widened to 16 bits and interleaved, so that
/// each `vpmaddwd` makes 32 products of a pair. The interleave works within each 128-bit quarter, so
/// of a pair of blocks the first sums bytes 0-3, 8-11, 16-19 and 24-27 and the second the others;
/// narrowing them together puts the bytes back in order. This takes two widenings and two
/// interleaves per 32 bytes, where widening each tap's 16 bytes straight to 32 bits took two
/// widenings, a shift and an or per 16 bytes (one thread, 640x480 unsplit, fastest of 100: 9.6-10.1
/// -> 8.0-8.4 ms). A lone last block is summed that way, its bytes in order.
#[cfg(target_arch = "x86_64")]
impl PairwiseMultiplyAdd for pulp::x86::V4 {
    type Sums = __m512i;

    #[inline(always)]
    fn sums(self, start: i32) -> __m512i {
        self.avx512f._mm512_set1_epi32(start)
    }

    #[inline(always)]
    fn add_pairs<const BLOCKS: usize>(
        self,
        sums: &mut [__m512i; BLOCKS],
        (first, second): (&[u8], &[u8]),
        weight: i32,
    ) {
        let (f, bw) = (self.avx512f, self.avx512bw);
        let weight = f._mm512_set1_epi32(weight);
        let (pairs, lone) = sums.as_chunks_mut::<2>();
        for (index, [low, high]) in pairs.iter_mut().enumerate() {
            let (first, second) = (
                bw._mm512_cvtepu8_epi16(bytes_32(first, 32 * index)),
                bw._mm512_cvtepu8_epi16(bytes_32(second, 32 * index)),
            );
            let products = bw._mm512_madd_epi16(bw._mm512_unpacklo_epi16(first, second), weight);
            *low = f._mm512_add_epi32(*low, products);
            let products = bw._mm512_madd_epi16(bw._mm512_unpackhi_epi16(first, second), weight);
            *high = f._mm512_add_epi32(*high, products);
        }
        if let [sums] = lone {
            let at = 32 * pairs.len();
            let (first, second) = (
                f._mm512_cvtepu8_epi32(bytes_16(first, at)),
                f._mm512_cvtepu8_epi32(bytes_16(second, at)),
            );
            let both = f._mm512_or_si512(first, f._mm512_slli_epi32::<16>(second));
            *sums = f._mm512_add_epi32(*sums, bw._mm512_madd_epi16(both, weight));
        }
    }

    #[inline(always)]
    fn narrowed<const BLOCKS: usize>(
        self,
        sums: [__m512i; BLOCKS],
        precision: u32,
    ) -> [[u8; 16]; BLOCKS] {
        let (f, bw) = (self.avx512f, self.avx512bw);
        let count = self.sse2._mm_cvtsi32_si128(precision as i32);
        let mut blocks = [[0; 16]; BLOCKS];
        let (pairs, lone) = sums.as_chunks::<2>();
        let (block_pairs, lone_block) = blocks.as_chunks_mut::<2>();
        for ([low, high], out) in pairs.iter().zip(block_pairs) {
            // Saturating to 16 bits keeps each quarter's words in byte order; negative words go to
            // 0, and the unsigned narrowing saturates at 255.
            let words = bw._mm512_packs_epi32(
                f._mm512_sra_epi32(*low, count),
                f._mm512_sra_epi32(*high, count),
            );
            let positive = bw._mm512_max_epi16(words, f._mm512_setzero_si512());
            *out = pulp::bytemuck::cast(bw._mm512_cvtusepi16_epi8(positive));
        }
        if let ([sums], [out]) = (lone, lone_block) {
            let shifted = f._mm512_sra_epi32(*sums, count);
            let positive = f._mm512_max_epi32(shifted, f._mm512_setzero_si512());
            *out = pulp::bytemuck::cast(f._mm512_cvtusepi32_epi8(positive));
        }
        blocks
    }
}

/// AVX2: both taps' bytes widened to 16 bits and interleaved, so that one `vpmaddwd` makes 16
/// products of a pair. The interleave works within each 128-bit half, so a block's `low` sums bytes
/// 0-3 and 8-11 and its `high` bytes 4-7 and 12-15; narrowing them together puts the bytes back in
/// order.
#[cfg(target_arch = "x86_64")]
impl PairwiseMultiplyAdd for pulp::x86::V3 {
    type Sums = (__m256i, __m256i);

    #[inline(always)]
    fn sums(self, start: i32) -> (__m256i, __m256i) {
        let start = self.avx._mm256_set1_epi32(start);
        (start, start)
    }

    #[inline(always)]
    fn add_pairs<const BLOCKS: usize>(
        self,
        sums: &mut [(__m256i, __m256i); BLOCKS],
        (first, second): (&[u8], &[u8]),
        weight: i32,
    ) {
        let avx2 = self.avx2;
        let weight = self.avx._mm256_set1_epi32(weight);
        for (index, (low, high)) in sums.iter_mut().enumerate() {
            let (first, second) = (
                avx2._mm256_cvtepu8_epi16(bytes_16(first, 16 * index)),
                avx2._mm256_cvtepu8_epi16(bytes_16(second, 16 * index)),
            );
            let products =
                avx2._mm256_madd_epi16(avx2._mm256_unpacklo_epi16(first, second), weight);
            *low = avx2._mm256_add_epi32(*low, products);
            let products =
                avx2._mm256_madd_epi16(avx2._mm256_unpackhi_epi16(first, second), weight);
            *high = avx2._mm256_add_epi32(*high, products);
        }
    }

    #[inline(always)]
    fn narrowed<const BLOCKS: usize>(
        self,
        sums: [(__m256i, __m256i); BLOCKS],
        precision: u32,
    ) -> [[u8; 16]; BLOCKS] {
        let avx2 = self.avx2;
        let count = self.sse2._mm_cvtsi32_si128(precision as i32);
        let mut blocks = [[0; 16]; BLOCKS];
        for (out, (low, high)) in blocks.iter_mut().zip(sums) {
            let (low, high) = (
                avx2._mm256_sra_epi32(low, count),
                avx2._mm256_sra_epi32(high, count),
            );
            // Saturating to 16 bits, then to unsigned bytes, clamps; the words come out as bytes
            // 0-7 | 8-15, the bytes as 0-7, 0-7 | 8-15, 8-15, and the permute takes 0-7 and 8-15.
            let words = avx2._mm256_packs_epi32(low, high);
            let bytes = avx2._mm256_packus_epi16(words, words);
            let ordered = avx2._mm256_permute4x64_epi64::<0b1000>(bytes);
            *out = pulp::bytemuck::cast(self.avx._mm256_castsi256_si128(ordered));
        }
        blocks
    }
}
