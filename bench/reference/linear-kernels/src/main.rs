//! Int8 linear-layer kernels at SmolVLM2-256M's sizes, timed in one process against ONNX Runtime's
//! MatMulNBits (8 bits, blocks of 128, accuracy_level 4): the groundwork of Lookout's `QuantizedLinear`
//! operator (src/vision/operators/linear/). A tool, outside the build and CI.
//!
//! The chain is one decoding step's weights: 30 layers of qkv (960x576), o (576x576), gate/up
//! (3072x576) and down (576x1536), then the LM head (49280x576), random levels and scales, written by
//! `make_chain.py DIR` as an ONNX graph of MatMulNBits nodes and as raw bytes for the kernels here.
//! Printed, alternating the ways round by round:
//! - prefills: MatMulNBits at 88 rows (a one-image prefill) against a kernel here taking 4 rows a pass
//!   over two weight rows; MatMulNBits at 88 and 882 rows (13 tiles) against dequantizing each weight
//!   to f32 and multiplying in ONNX Runtime's SGEMM (a Gemm node, `gemm.onnx`);
//! - one row (a decoding step) through MatMulNBits, through the kernels here on two threads (16-bit
//!   activations: `vpmaddwd` over the weights widened to 16 bits, two weight rows at a time; 8-bit
//!   activations: `vpsignb`, `vpmaddubsw`, `vpmaddwd`, two or four weight rows at a time, the levels
//!   moved from -128 to -127), and a plain sum over the same bytes with the same thread hand-offs (the
//!   bandwidth a kernel could reach).
//!
//!   python make_chain.py /tmp/chain && cargo build --release &&
//!   CHAIN=/tmp/chain PF=1024 GLIBC_TUNABLES=glibc.malloc.hugetlb=1 ORT_DYLIB_PATH=.../libonnxruntime.so \
//!   target/release/linear-kernels [own-first]
//!
//! `PF`: how many bytes ahead of each weight row the kernels prefetch (0: none). `own-first`: load the
//! kernels' copy of the weights before the session's (the order moved figures by up to 20% here).
//! `GLIBC_TUNABLES=glibc.malloc.hugetlb=1` puts both copies in huge pages, as Lookout moves its weights.
//! x86-64 with AVX2 and FMA only.

use std::arch::x86_64::*;
use std::sync::atomic::{AtomicUsize, Ordering::*};
use std::time::Instant;
use ort::session::Session;
use ort::value::Tensor;

const BS: usize = 128;

fn dir() -> String {
    std::env::var("CHAIN").unwrap_or_else(|_| "/tmp/chain".to_owned())
}
struct W { n: usize, k: usize, blocks: usize, q: Vec<u8>, s: Vec<f32>, q8: Vec<i8> }

fn load() -> Vec<W> {
    let bytes = std::fs::read(format!("{}/chain.bin", dir())).unwrap();
    let mut at = 0;
    let mut shapes = vec![];
    for _ in 0..30 { shapes.extend([(960, 576), (576, 576), (3072, 576), (576, 1536)]); }
    shapes.push((49280, 576));
    shapes.into_iter().map(|(n, k): (usize, usize)| {
        let blocks = k.div_ceil(BS);
        let q = bytes[at..at + n * blocks * BS].to_vec(); at += n * blocks * BS;
        let s: Vec<f32> = bytes[at..at + n * blocks * 4].chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect(); at += n * blocks * 4;
        // the same levels as signed bytes, -128 moved to -127 so that `vpsignb` can negate every one
        let q8 = q.iter().map(|&v| (v as i16 - 128).max(-127) as i8).collect();
        W { n, k, blocks, q, s, q8 }
    }).collect()
}

struct Act { q: Vec<i16>, scale: Vec<f32>, corr: Vec<f32> }
fn quantize(x: &[f32]) -> Act {
    let blocks = x.len().div_ceil(BS);
    let mut q = vec![0i16; blocks * BS]; let mut scale = vec![0f32; blocks]; let mut corr = vec![0f32; blocks];
    for b in 0..blocks {
        let xs = &x[b * BS..((b + 1) * BS).min(x.len())];
        let m = xs.iter().fold(0f32, |m, v| m.max(v.abs()));
        let s = if m > 0.0 { m / 32767.0 } else { 1.0 };
        let mut sum = 0i64;
        for (i, v) in xs.iter().enumerate() { let t = (v / s).round() as i16; q[b * BS + i] = t; sum += t as i64; }
        scale[b] = s; corr[b] = 128.0 * sum as f32;
    }
    Act { q, scale, corr }
}

/// Activations quantized per block to 8 bits (-127..=127): `q` as is (the signs `vpsignb` applies to
/// the weights) and `abs` (the unsigned operand of `vpmaddubsw`).
struct Act8 { q: Vec<i8>, abs: Vec<u8>, scale: Vec<f32> }
fn quantize8(x: &[f32]) -> Act8 {
    let blocks = x.len().div_ceil(BS);
    let mut q = vec![0i8; blocks * BS]; let mut scale = vec![0f32; blocks];
    for b in 0..blocks {
        let xs = &x[b * BS..((b + 1) * BS).min(x.len())];
        let m = xs.iter().fold(0f32, |m, v| m.max(v.abs()));
        let s = if m > 0.0 { m / 127.0 } else { 1.0 };
        for (i, v) in xs.iter().enumerate() { q[b * BS + i] = (v / s).round() as i8; }
        scale[b] = s;
    }
    let abs = q.iter().map(|v| v.unsigned_abs()).collect();
    Act8 { q, abs, scale }
}
/// One decoding step's rows with 8-bit activations: |a| x (w with a's sign) by `vpmaddubsw`, whose
/// pair sums stay below 2 x 127 x 127, widened by `vpmaddwd`; `R` weight rows at a time.
#[target_feature(enable = "avx2,fma")]
unsafe fn rows8<const R: usize>(w: &W, a: &Act8, out: *mut f32, r0: usize, r1: usize) { unsafe {
    let blocks = w.blocks;
    let ones = _mm256_set1_epi16(1);
    let mut n = r0;
    while n + R <= r1 {
        let p: [*const i8; R] = std::array::from_fn(|r| w.q8.as_ptr().add((n + r) * blocks * BS));
        let mut f = [_mm256_setzero_ps(); R];
        for b in 0..blocks {
            let mut acc = [_mm256_setzero_si256(); R];
            let d = PF.load(Relaxed);
            if d > 0 {
                for r in 0..R { _mm_prefetch::<_MM_HINT_T0>(p[r].add(b * BS + d)); _mm_prefetch::<_MM_HINT_T0>(p[r].add(b * BS + d + 64)); }
            }
            for c in 0..BS / 32 {
                let at = b * BS + c * 32;
                let sa = _mm256_loadu_si256(a.q.as_ptr().add(at) as *const __m256i);
                let ua = _mm256_loadu_si256(a.abs.as_ptr().add(at) as *const __m256i);
                for r in 0..R {
                    let wv = _mm256_loadu_si256(p[r].add(at) as *const __m256i);
                    let prod = _mm256_maddubs_epi16(ua, _mm256_sign_epi8(wv, sa));
                    acc[r] = _mm256_add_epi32(acc[r], _mm256_madd_epi16(prod, ones));
                }
            }
            for r in 0..R {
                let sc = *w.s.get_unchecked((n + r) * blocks + b) * a.scale[b];
                f[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc[r]), _mm256_set1_ps(sc), f[r]);
            }
        }
        for r in 0..R { *out.add(n + r) = hsum(f[r]); }
        n += R;
    }
}}
static KERNEL: AtomicUsize = AtomicUsize::new(0);
/// The chain's kernel by `KERNEL`: 0 the 16-bit one, 1 and 2 the 8-bit one over 2 and 4 weight rows.
unsafe fn run_rows(w: &W, a: &Act, a8: &Act8, out: *mut f32, r0: usize, r1: usize) { unsafe {
    match KERNEL.load(Relaxed) {
        0 => rows(w, a, out, r0, r1),
        1 => rows8::<2>(w, a8, out, r0, r1),
        _ => rows8::<4>(w, a8, out, r0, r1),
    }
}}

static PF: AtomicUsize = AtomicUsize::new(0);
static SUM: AtomicUsize = AtomicUsize::new(0);
#[target_feature(enable = "avx2")]
unsafe fn sum_rows(w: &W, out: *mut f32, r0: usize, r1: usize) { unsafe {
    let p = w.q.as_ptr().add(r0 * w.blocks * BS); let len = (r1 - r0) * w.blocks * BS;
    let mut acc = _mm256_setzero_si256(); let mut i = 0;
    while i + 32 <= len { acc = _mm256_add_epi8(acc, _mm256_loadu_si256(p.add(i) as *const __m256i)); i += 32; }
    let mut t = [0i8; 32]; _mm256_storeu_si256(t.as_mut_ptr() as *mut __m256i, acc);
    *out.add(r0) = t.iter().map(|&x| x as f32).sum();
}}
#[target_feature(enable = "avx2,fma")]
unsafe fn rows(w: &W, a: &Act, out: *mut f32, r0: usize, r1: usize) { unsafe {
    if SUM.load(Relaxed) == 1 { return sum_rows(w, out, r0, r1); }
    let blocks = w.blocks;
    let mut n = r0;
    while n + 2 <= r1 {
        let p0 = w.q.as_ptr().add(n * blocks * BS);
        let p1 = p0.add(blocks * BS);
        let mut f0 = _mm256_setzero_ps(); let mut f1 = _mm256_setzero_ps();
        let mut c0 = 0f32; let mut c1 = 0f32;
        for b in 0..blocks {
            let mut a0 = _mm256_setzero_si256(); let mut a1 = _mm256_setzero_si256();
            let ap = a.q.as_ptr().add(b * BS);
            let d = PF.load(Relaxed);
            if d > 0 { _mm_prefetch::<_MM_HINT_T0>(p0.add(b * BS + d) as *const i8); _mm_prefetch::<_MM_HINT_T0>(p0.add(b * BS + d + 64) as *const i8);
                       _mm_prefetch::<_MM_HINT_T0>(p1.add(b * BS + d) as *const i8); _mm_prefetch::<_MM_HINT_T0>(p1.add(b * BS + d + 64) as *const i8); }
            for c in 0..BS / 16 {
                let av = _mm256_loadu_si256(ap.add(c * 16) as *const __m256i);
                let w0 = _mm256_cvtepu8_epi16(_mm_loadu_si128(p0.add(b * BS + c * 16) as *const __m128i));
                let w1 = _mm256_cvtepu8_epi16(_mm_loadu_si128(p1.add(b * BS + c * 16) as *const __m128i));
                a0 = _mm256_add_epi32(a0, _mm256_madd_epi16(w0, av));
                a1 = _mm256_add_epi32(a1, _mm256_madd_epi16(w1, av));
            }
            let s0 = *w.s.get_unchecked(n * blocks + b) * a.scale[b];
            let s1 = *w.s.get_unchecked((n + 1) * blocks + b) * a.scale[b];
            f0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(a0), _mm256_set1_ps(s0), f0);
            f1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(a1), _mm256_set1_ps(s1), f1);
            c0 += s0 * a.corr[b]; c1 += s1 * a.corr[b];
        }
        *out.add(n) = hsum(f0) - c0; *out.add(n + 1) = hsum(f1) - c1;
        n += 2;
    }
}}

/// Several activation rows (a prefill), 4 a pass over two weight rows at a time: each weight load
/// serves 4 rows and each activation load both weight rows. A last group of fewer than 4 rows repeats
/// its first row in the missing places and drops their results.
#[target_feature(enable = "avx2,fma")]
unsafe fn rows_multi(w: &W, acts: &[Act], out: *mut f32, stride: usize, r0: usize, r1: usize) { unsafe {
    let blocks = w.blocks;
    let m = acts.len();
    let mut g = 0;
    while g < m {
        let take = (m - g).min(4);
        let rows: [&Act; 4] = std::array::from_fn(|r| &acts[g + if r < take { r } else { 0 }]);
        let a: [*const i16; 4] = rows.map(|row| row.q.as_ptr());
        let mut n = r0;
        while n + 2 <= r1 {
            let p0 = w.q.as_ptr().add(n * blocks * BS);
            let p1 = p0.add(blocks * BS);
            let mut f = [[_mm256_setzero_ps(); 2]; 4];
            let mut corr = [[0f32; 2]; 4];
            for b in 0..blocks {
                let mut acc = [[_mm256_setzero_si256(); 2]; 4];
                for c in 0..BS / 16 {
                    let at = b * BS + c * 16;
                    let w0 = _mm256_cvtepu8_epi16(_mm_loadu_si128(p0.add(at) as *const __m128i));
                    let w1 = _mm256_cvtepu8_epi16(_mm_loadu_si128(p1.add(at) as *const __m128i));
                    for r in 0..4 {
                        let av = _mm256_loadu_si256(a[r].add(at) as *const __m256i);
                        acc[r][0] = _mm256_add_epi32(acc[r][0], _mm256_madd_epi16(w0, av));
                        acc[r][1] = _mm256_add_epi32(acc[r][1], _mm256_madd_epi16(w1, av));
                    }
                }
                let ws = [*w.s.get_unchecked(n * blocks + b), *w.s.get_unchecked((n + 1) * blocks + b)];
                for r in 0..4 {
                    for j in 0..2 {
                        let sc = ws[j] * rows[r].scale[b];
                        f[r][j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc[r][j]), _mm256_set1_ps(sc), f[r][j]);
                        corr[r][j] += sc * rows[r].corr[b];
                    }
                }
            }
            for r in 0..take { for j in 0..2 { *out.add((g + r) * stride + n + j) = hsum(f[r][j]) - corr[r][j]; } }
            n += 2;
        }
        g += take;
    }
}}
/// Rows `[first, first + out.len() / k)` of `w` as f32, `[rows, k]`: (level - 128) x the block's scale.
fn dequantize(w: &W, out: &mut [f32], first: usize) {
    for (i, row) in out.chunks_exact_mut(w.k).enumerate() {
        let n = first + i;
        let levels = &w.q[n * w.blocks * BS..(n + 1) * w.blocks * BS];
        for (b, chunk) in row.chunks_mut(BS).enumerate() {
            let scale = w.s[n * w.blocks + b];
            for (v, &l) in chunk.iter_mut().zip(&levels[b * BS..]) { *v = (l as i32 - 128) as f32 * scale; }
        }
    }
}
#[inline(always)]
unsafe fn hsum(v: __m256) -> f32 { unsafe {
    let s = _mm_add_ps(_mm256_extractf128_ps(v, 1), _mm256_castps256_ps128(v));
    let s = _mm_hadd_ps(s, s); let s = _mm_hadd_ps(s, s); _mm_cvtss_f32(s)
}}

// a two-thread pool: the worker spins on `job`
struct Pool { job: AtomicUsize, done: AtomicUsize, task: std::sync::Mutex<Option<(usize, usize, usize, usize)>> }

fn main() {
    let order_own_first = std::env::args().nth(1).as_deref() == Some("own-first");
    PF.store(std::env::var("PF").map(|v| v.parse().unwrap()).unwrap_or(0), Relaxed);
    let env = ort::init_from(std::env::var("ORT_DYLIB_PATH").expect("ORT_DYLIB_PATH names the ONNX Runtime library")).unwrap().build().unwrap();
    let (ws, mut session) = if order_own_first {
        let ws = load();
        let s = Session::builder(&env).unwrap().with_intra_threads(2).unwrap().with_config_entry("session.force_spinning_stop", "1").unwrap().commit_from_file(format!("{}/chain.onnx", dir())).unwrap();
        (ws, s)
    } else {
        let s = Session::builder(&env).unwrap().with_intra_threads(2).unwrap().with_config_entry("session.force_spinning_stop", "1").unwrap().commit_from_file(format!("{}/chain.onnx", dir())).unwrap();
        (load(), s)
    };
    let bytes: usize = ws.iter().map(|w| w.q.len() + w.s.len() * 4).sum();
    let x576: Vec<f32> = (0..576).map(|i| ((i as f32) * 0.37).sin()).collect();
    let x1536: Vec<f32> = (0..1536).map(|i| ((i as f32) * 0.11).cos()).collect();
    // correctness: compare last node of ORT with own
    let outs = session.run(ort::inputs!["x576" => Tensor::from_array(([1usize, 576], x576.clone())).unwrap(), "x1536" => Tensor::from_array(([1usize, 1536], x1536.clone())).unwrap()]).unwrap();
    let ort_first: Vec<f32> = outs["w0"].try_extract_tensor::<f32>().unwrap().1.to_vec();
    drop(outs);
    let a576 = quantize(&x576); let a1536 = quantize(&x1536);
    let mut out = vec![0f32; 49280];
    unsafe { rows(&ws[0], &a576, out.as_mut_ptr(), 0, 960) };
    let err = ort_first.iter().zip(&out).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    let mag = ort_first.iter().fold(0f32, |m, v| m.max(v.abs()));
    println!("{} MB; max |ORT - own| on w0: {err} (of {mag})", bytes / 1_000_000);
    let a576_8 = quantize8(&x576); let a1536_8 = quantize8(&x1536);
    {
        let w = &ws[0];
        let reference: Vec<f64> = (0..w.n).map(|n| (0..w.blocks).map(|b| {
            let dot: i64 = (0..BS).map(|i| w.q8[(n * w.blocks + b) * BS + i] as i64 * a576_8.q[b * BS + i] as i64).sum();
            dot as f64 * w.s[n * w.blocks + b] as f64 * a576_8.scale[b] as f64 }).sum()).collect();
        for (name, kernel) in [("rows8<2>", 1), ("rows8<4>", 2)] {
            KERNEL.store(kernel, Relaxed);
            let mut o = vec![0f32; w.n];
            unsafe { run_rows(w, &a576, &a576_8, o.as_mut_ptr(), 0, w.n) };
            let e = reference.iter().zip(&o).map(|(r, v)| (r - *v as f64).abs()).fold(0f64, f64::max);
            let vs_ort = ort_first.iter().zip(&o).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            println!("{name}: max |exact - own| {e:.2e}, max |ORT - own| {vs_ort} (of {mag})");
        }
        KERNEL.store(0, Relaxed);
        for (name, kernel) in [("i16", 0), ("rows8<2>", 1), ("rows8<4>", 2)] {
            KERNEL.store(kernel, Relaxed);
            let w = &ws[1]; let t = Instant::now();
            for _ in 0..2000 { unsafe { run_rows(w, &a576, &a576_8, out.as_mut_ptr(), 0, w.n) }; }
            let e = t.elapsed().as_secs_f64();
            println!("{name}, one thread, weights in L2: {:.1} GB/s", (w.q.len() * 2000) as f64 / e / 1e9);
        }
        KERNEL.store(0, Relaxed);
    }

    {
        let w = &ws[1]; let t = Instant::now();
        for _ in 0..2000 { unsafe { rows(w, &a576, out.as_mut_ptr(), 0, w.n) }; }
        let e = t.elapsed().as_secs_f64();
        println!("own kernel, one thread, weights in L2: {:.1} GB/s", (w.q.len() * 2000) as f64 / e / 1e9);
        SUM.store(1, Relaxed); let t = Instant::now();
        for _ in 0..2000 { unsafe { rows(w, &a576, out.as_mut_ptr(), 0, w.n) }; }
        let e = t.elapsed().as_secs_f64(); SUM.store(0, Relaxed);
        println!("sum, one thread, in L2: {:.1} GB/s", (w.q.len() * 2000) as f64 / e / 1e9);
    }

    {
        const M: usize = 88;
        let x576m: Vec<f32> = (0..M * 576).map(|i| ((i as f32) * 0.37).sin()).collect();
        let x1536m: Vec<f32> = (0..M * 1536).map(|i| ((i as f32) * 0.11).cos()).collect();
        let mut out = vec![0f32; M * 49280];
        let mut t_ort = vec![]; let mut t_own = vec![];
        for round in 0..6 {
            for k in 0..2 {
                let t = Instant::now();
                if (round + k) % 2 == 0 {
                    let o = session.run(ort::inputs!["x576" => Tensor::from_array(([M, 576], x576m.clone())).unwrap(), "x1536" => Tensor::from_array(([M, 1536], x1536m.clone())).unwrap()]).unwrap();
                    drop(o); t_ort.push(t.elapsed().as_secs_f64());
                } else {
                    let a576: Vec<Act> = x576m.chunks(576).map(quantize).collect();
                    let a1536: Vec<Act> = x1536m.chunks(1536).map(quantize).collect();
                    let outp = out.as_mut_ptr() as usize;
                    for w in ws.iter() {
                        let acts = if w.k == 576 { &a576 } else { &a1536 };
                        let half = (w.n / 2) & !1;
                        std::thread::scope(|sc| {
                            sc.spawn(|| unsafe { rows_multi(w, acts, outp as *mut f32, w.n, half, w.n) });
                            unsafe { rows_multi(w, acts, outp as *mut f32, w.n, 0, half) };
                        });
                    }
                    t_own.push(t.elapsed().as_secs_f64());
                }
            }
        }
        t_ort.sort_by(|a, b| a.partial_cmp(b).unwrap()); t_own.sort_by(|a, b| a.partial_cmp(b).unwrap());
        println!("prefill {M} rows: MatMulNBits {:.1} ms, own (i16 madd, 2 weight rows by 4 activation rows) {:.1} ms (medians)", t_ort[3] * 1e3, t_own[3] * 1e3);
        // correctness of multi-row against ORT on w0
        let o = session.run(ort::inputs!["x576" => Tensor::from_array(([M, 576], x576m.clone())).unwrap(), "x1536" => Tensor::from_array(([M, 1536], x1536m.clone())).unwrap()]).unwrap();
        let ort0: Vec<f32> = o["w0"].try_extract_tensor::<f32>().unwrap().1.to_vec();
        let a576: Vec<Act> = x576m.chunks(576).map(quantize).collect();
        let mut own0 = vec![0f32; M * 960];
        unsafe { rows_multi(&ws[0], &a576, own0.as_mut_ptr(), 960, 0, 960) };
        let err = ort0.iter().zip(&own0).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        println!("max |ORT - own| prefill w0: {err}");
    }
    // A prefill by dequantizing each weight to f32 (`[n, k]`, two threads) and multiplying in ONNX
    // Runtime's SGEMM (a Gemm node, B transposed), against MatMulNBits, at one image's and 13 tiles' rows.
    {
        let mut gemm = Session::builder(&env).unwrap().with_intra_threads(2).unwrap().with_config_entry("session.force_spinning_stop", "1").unwrap().commit_from_file(format!("{}/gemm.onnx", dir())).unwrap();
        let largest = ws.iter().map(|w| w.n * w.k).max().unwrap();
        let mut scratch = vec![0f32; largest];
        for m in [88usize, 882] {
            let x576m: Vec<f32> = (0..m * 576).map(|i| ((i as f32) * 0.37).sin()).collect();
            let x1536m: Vec<f32> = (0..m * 1536).map(|i| ((i as f32) * 0.11).cos()).collect();
            let mut t_ort = vec![]; let mut t_deq = vec![]; let mut t_gemm = vec![];
            let mut first_gemm: Vec<f32> = vec![];
            for round in 0..4 {
                for k in 0..2 {
                    if (round + k) % 2 == 0 {
                        let t = Instant::now();
                        let o = session.run(ort::inputs!["x576" => Tensor::from_array(([m, 576], x576m.clone())).unwrap(), "x1536" => Tensor::from_array(([m, 1536], x1536m.clone())).unwrap()]).unwrap();
                        drop(o); t_ort.push(t.elapsed().as_secs_f64());
                    } else {
                        let (mut deq, mut mul) = (0f64, 0f64);
                        for (wi, w) in ws.iter().enumerate() {
                            let t = Instant::now();
                            let values = &mut scratch[..w.n * w.k];
                            let half = w.n / 2;
                            let (top, bottom) = values.split_at_mut(half * w.k);
                            std::thread::scope(|sc| {
                                sc.spawn(|| dequantize(w, top, 0));
                                dequantize(w, bottom, half);
                            });
                            deq += t.elapsed().as_secs_f64();
                            let t = Instant::now();
                            let x = if w.k == 576 { &x576m } else { &x1536m };
                            let o = gemm.run(ort::inputs!["x" => ort::value::TensorRef::from_array_view(([m, w.k], &x[..])).unwrap(), "b" => ort::value::TensorRef::from_array_view(([w.n, w.k], &*values)).unwrap()]).unwrap();
                            if wi == 0 && first_gemm.is_empty() { first_gemm = o["y"].try_extract_tensor::<f32>().unwrap().1.to_vec(); }
                            drop(o);
                            mul += t.elapsed().as_secs_f64();
                        }
                        t_deq.push(deq); t_gemm.push(mul);
                    }
                }
            }
            let o = session.run(ort::inputs!["x576" => Tensor::from_array(([m, 576], x576m.clone())).unwrap(), "x1536" => Tensor::from_array(([m, 1536], x1536m.clone())).unwrap()]).unwrap();
            let ort0: Vec<f32> = o["w0"].try_extract_tensor::<f32>().unwrap().1.to_vec();
            let err = ort0.iter().zip(&first_gemm).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            let mag = ort0.iter().fold(0f32, |m, v| m.max(v.abs()));
            for v in [&mut t_ort, &mut t_deq, &mut t_gemm] { v.sort_by(|a, b| a.partial_cmp(b).unwrap()); }
            let total: Vec<f64> = { let mut t: Vec<f64> = t_deq.iter().zip(&t_gemm).map(|(a, b)| a + b).collect(); t.sort_by(|a, b| a.partial_cmp(b).unwrap()); t };
            println!("prefill {m} rows: MatMulNBits {:.1} ms; dequantize + SGEMM {:.1} ms (dequantize {:.1}, SGEMM {:.1}); MatMulNBits/this {:.2}; max |MatMulNBits - this| on w0 {err} (of {mag}) (medians of 4)",
                t_ort[2] * 1e3, total[2] * 1e3, t_deq[2] * 1e3, t_gemm[2] * 1e3, t_ort[2] / total[2]);
        }
    }
    let pool = Pool { job: AtomicUsize::new(0), done: AtomicUsize::new(0), task: std::sync::Mutex::new(None) };
    let outp = out.as_mut_ptr() as usize;
    let stop = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        let (pool, ws, a576, a1536, stop) = (&pool, &ws, &a576, &a1536, &stop);
        let (a576_8, a1536_8) = (&a576_8, &a1536_8);
        let worker = scope.spawn(move || {
            let mut seen = 0;
            loop {
                let j = pool.job.load(Acquire);
                if j == seen { let st = stop.load(Acquire); if st == 1 { return; } if st == 2 { std::thread::park(); } std::hint::spin_loop(); continue; }
                seen = j;
                let (wi, r0, r1, o) = pool.task.lock().unwrap().unwrap();
                let w = &ws[wi];
                let (a, a8) = if w.k == 576 { (a576, a576_8) } else { (a1536, a1536_8) };
                unsafe { run_rows(w, a, a8, o as *mut f32, r0, r1) };
                pool.done.fetch_add(1, Release);
            }
        });
        stop.store(2, Release);
        let own_chain = || {
            for (wi, w) in ws.iter().enumerate() {
                let half = (w.n / 2) & !3;
                *pool.task.lock().unwrap() = Some((wi, half, w.n, outp));
                let before = pool.done.load(Acquire);
                pool.job.fetch_add(1, Release);
                let (a, a8) = if w.k == 576 { (a576, a576_8) } else { (a1536, a1536_8) };
                unsafe { run_rows(w, a, a8, outp as *mut f32, 0, half) };
                while pool.done.load(Acquire) == before { std::hint::spin_loop(); }
            }
        };
        // 0: MatMulNBits, 1: the 16-bit kernel, 2 and 3: the 8-bit kernel over 2 and 4 rows, 4: the sum
        let names = ["MatMulNBits", "own i16 x2", "own s8 x2", "own s8 x4", "sum"];
        let mut times: Vec<Vec<f64>> = vec![vec![]; 5];
        for round in 0..30 {
            for k in 0..5 {
                let which = (round + k) % 5;
                let t = Instant::now();
                if which == 0 {
                    let o = session.run(ort::inputs!["x576" => Tensor::from_array(([1usize, 576], x576.clone())).unwrap(), "x1536" => Tensor::from_array(([1usize, 1536], x1536.clone())).unwrap()]).unwrap();
                    drop(o);
                } else {
                    if which == 4 { SUM.store(1, Relaxed) } else { KERNEL.store(which - 1, Relaxed) }
                    stop.store(0, Release); worker.thread().unpark();
                    let t0 = Instant::now(); own_chain(); times[which].push(t0.elapsed().as_secs_f64());
                    stop.store(2, Release); SUM.store(0, Relaxed); KERNEL.store(0, Relaxed);
                    continue;
                }
                times[which].push(t.elapsed().as_secs_f64());
            }
        }
        stop.store(1, Release); worker.thread().unpark();
        for v in times.iter_mut() { v.sort_by(|a, b| a.partial_cmp(b).unwrap()); }
        let med = |v: &Vec<f64>| v[v.len() / 2];
        for (name, v) in names.iter().zip(&times) {
            println!("{name:12} chain: median {:.2} ms ({:.1} GB/s), best {:.2}, MatMulNBits/this {:.2}", med(v) * 1e3, bytes as f64 / med(v) / 1e9, v[0] * 1e3, med(&times[0]) / med(v));
        }
    });
}
