//! The model's weights in huge pages (2 MB on x86-64), where the CPU reads them faster than in the
//! system's usual 4 KB pages.
//!
//! A decoding step streams every decoder weight from memory, so how fast memory is read is how fast
//! an answer is written, and it is read faster from huge pages. On a 2-core box, a plain 2-thread read
//! of 160 MB ran at 23-26 GB/s from 4 KB pages against 27-28 from huge pages (alternating in one
//! process), and ONNX Runtime's `MatMulNBits` over a chain of int8 weights at 16-17 GB/s against 19-21.5
//! (alternating processes); Lookout's int8 decoder then decoded 2-4% faster. But ONNX Runtime takes
//! the weights' memory from the C library's `malloc`, and where the system gives huge pages only to
//! memory that asks for them (`/sys/kernel/mm/transparent_hugepage/enabled` set to `madvise`, a common
//! default) they get none.
//!
//! So once a model has loaded, [`collapse_resident`] asks the kernel to move the process's memory
//! that is wholly in use, in whole aligned huge-page spans, into huge pages (`MADV_COLLAPSE`, Linux 6.1
//! and later): the weights, which the load has just written. Memory only partly in use (the decoder's
//! cache buffers, whose pages are handed back until written; thread stacks) is left alone, so the
//! process's resident memory stays the same. The kernel copies the pages (the 256M int8 model's,
//! about 230 MB, within the load's usual time; 160 MB took 0.35-2 s where free memory first had to be
//! compacted), and their contents never change. Where the kernel cannot (an older one, huge pages
//! turned off), the model runs as before.
//!
//! [`advise`] is for memory Lookout allocates itself before writing it, such as the buffer over which
//! `lookout bench` measures the read bandwidth that bounds decoding: it then gets huge pages as it is
//! written, as the weights do, so that the bound is the machine's best.

use std::fs;
use std::time::Instant;

/// The size of a huge page, the span `MADV_COLLAPSE` moves at once; `None` where the kernel has none.
fn huge_page_size() -> Option<usize> {
    fs::read_to_string("/sys/kernel/mm/transparent_hugepage/hpage_pmd_size")
        .ok()?
        .trim()
        .parse()
        .ok()
        .filter(|size: &usize| size.is_power_of_two())
}

/// What [`collapse_resident`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Collapsed {
    /// The bytes now in huge pages (some may have been already).
    pub bytes: usize,
    /// Spans the kernel could not move (it had no free huge page, say); they stay in small pages.
    pub refused: usize,
    /// The kernel does not move memory into huge pages at all.
    pub unsupported: bool,
}

/// Moves the process's private anonymous memory that is wholly resident, in aligned spans of a huge
/// page, into huge pages, and logs what it did.
pub fn collapse_resident() -> Collapsed {
    let started = Instant::now();
    let (Some(huge_page), Ok(maps)) = (huge_page_size(), fs::read_to_string("/proc/self/maps"))
    else {
        return Collapsed {
            unsupported: true,
            ..Collapsed::default()
        };
    };
    let mut collapsed = Collapsed::default();
    for range in anonymous_ranges(&maps) {
        for span in huge_spans(range, huge_page) {
            if !resident(span.clone()) {
                continue;
            }
            match collapse(span.clone()) {
                Ok(()) => collapsed.bytes += span.len(),
                Err(error) if error.raw_os_error() == Some(libc::EINVAL) => {
                    collapsed.unsupported = true;
                    tracing::debug!(%error, "The kernel does not move memory into huge pages (MADV_COLLAPSE, Linux 6.1 and later): the model's weights stay in small pages.");
                    return collapsed;
                }
                Err(_) => collapsed.refused += 1,
            }
        }
    }
    tracing::debug!(
        megabytes = collapsed.bytes >> 20,
        refused_spans = collapsed.refused,
        seconds = started.elapsed().as_secs_f64(),
        "Memory in use moved into huge pages."
    );
    collapsed
}

/// The address ranges of the private, writable, anonymous mappings in `maps` (the format of
/// `/proc/self/maps`: `start-end perms offset device inode [path]`), the heap's among them.
fn anonymous_ranges(maps: &str) -> Vec<std::ops::Range<usize>> {
    maps.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [range, perms, _offset, _device, inode, rest @ ..] = fields.as_slice() else {
                return None;
            };
            let anonymous = *inode == "0" && matches!(rest, [] | ["[heap]"]);
            if !anonymous || !perms.starts_with("rw") || !perms.ends_with('p') {
                return None;
            }
            let (start, end) = range.split_once('-')?;
            let start = usize::from_str_radix(start, 16).ok()?;
            let end = usize::from_str_radix(end, 16).ok()?;
            (start < end).then_some(start..end)
        })
        .collect()
}

/// The part of `range` that starts and ends on multiples of `align` (empty if none).
fn aligned_within(range: std::ops::Range<usize>, align: usize) -> std::ops::Range<usize> {
    let first = range.start.next_multiple_of(align);
    let end = range.end / align * align;
    first..end.max(first)
}

/// The aligned spans of `huge_page` bytes wholly inside `range`.
fn huge_spans(
    range: std::ops::Range<usize>,
    huge_page: usize,
) -> impl Iterator<Item = std::ops::Range<usize>> {
    aligned_within(range, huge_page)
        .step_by(huge_page)
        .map(move |start| start..start + huge_page)
}

/// Whether every page of `span` is in memory.
#[allow(unsafe_code)]
fn resident(span: std::ops::Range<usize>) -> bool {
    // SAFETY: sysconf only reads a system constant.
    let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(0);
    if page == 0 {
        return false;
    }
    let mut pages = vec![0u8; span.len() / page];
    // SAFETY: mincore reads no memory of the span, only the kernel's record of it, and writes one
    // byte a page into `pages`, which has room for every page of the span. An address that is no
    // longer mapped makes it fail, not fault.
    let status = unsafe {
        libc::mincore(
            span.start as *mut libc::c_void,
            span.len(),
            pages.as_mut_ptr(),
        )
    };
    status == 0 && pages.iter().all(|page| page & 1 == 1)
}

/// Asks the kernel to move `span` into a huge page.
#[allow(unsafe_code)]
fn collapse(span: std::ops::Range<usize>) -> std::io::Result<()> {
    // SAFETY: MADV_COLLAPSE copies the span's pages into a huge page and maps it in their place,
    // contents unchanged, whoever owns the memory; on failure the pages stay as they were. An
    // address that is no longer mapped makes it fail.
    let status = unsafe {
        libc::madvise(
            span.start as *mut libc::c_void,
            span.len(),
            libc::MADV_COLLAPSE,
        )
    };
    if status == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Asks for huge pages for `memory`, not yet written: its aligned spans then get them as they are
/// written, where the system allows.
#[allow(unsafe_code)]
pub fn advise<T>(memory: &mut [T]) {
    let Some(huge_page) = huge_page_size() else {
        return;
    };
    let start = memory.as_mut_ptr() as usize;
    let span = aligned_within(start..start + std::mem::size_of_val(memory), huge_page);
    if !span.is_empty() {
        // SAFETY: the span lies inside `memory`, which this call holds exclusively; the advice
        // changes how its pages are backed, never what they hold.
        unsafe {
            libc::madvise(
                span.start as *mut libc::c_void,
                span.len(),
                libc::MADV_HUGEPAGE,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anonymous_private_writable_mappings_are_found_and_files_are_not() {
        let maps = "\
55d0c0000000-55d0c0200000 r--p 00000000 08:01 1234 /usr/bin/lookout
55d0c1000000-55d0c1400000 rw-p 00000000 00:00 0 [heap]
7f0000000000-7f0000800000 rw-p 00000000 00:00 0
7f0001000000-7f0001200000 rw-s 00000000 00:01 77 /dev/shm/x
7f0002000000-7f0002200000 r--p 00000000 00:00 0
7f0003000000-7f0003200000 rw-p 00000000 08:01 99 /model.onnx.data
7ffc00000000-7ffc00100000 rw-p 00000000 00:00 0 [stack]
garbage line
";
        assert_eq!(
            anonymous_ranges(maps),
            [
                0x55d0_c100_0000..0x55d0_c140_0000,
                0x7f00_0000_0000..0x7f00_0080_0000
            ]
        );
    }

    #[test]
    fn only_whole_aligned_spans_are_taken() {
        let spans: Vec<_> = huge_spans(0x10_0000..0x70_0000, 2 << 20).collect();
        assert_eq!(spans, [0x20_0000..0x40_0000, 0x40_0000..0x60_0000]);
        assert_eq!(huge_spans(0x20_0001..0x3F_FFFF, 2 << 20).count(), 0);
    }

    #[test]
    #[allow(unsafe_code)]
    fn memory_in_use_is_found_resident_and_memory_handed_back_is_not() {
        // Twice a huge page, so that a whole aligned span lies inside.
        let huge_page = huge_page_size().unwrap_or(2 << 20);
        let mut memory = vec![1u8; 2 * huge_page];
        let start = memory.as_mut_ptr() as usize;
        let span = huge_spans(start..start + memory.len(), huge_page)
            .next()
            .expect("an aligned span");
        assert!(resident(span.clone()));
        // SAFETY: the span lies inside `memory`, held here; handed back, it reads as zeros.
        unsafe {
            libc::madvise(
                span.start as *mut libc::c_void,
                span.len(),
                libc::MADV_DONTNEED,
            );
        }
        assert!(!resident(span));
    }

    /// The huge pages, in kB, of the mapping holding `address` (`/proc/self/smaps`).
    fn huge_kb_at(address: usize) -> usize {
        let smaps = fs::read_to_string("/proc/self/smaps").expect("smaps");
        let mut inside = false;
        for line in smaps.lines() {
            if let Some(range) = mapping_range(line) {
                inside = range.contains(&address);
            } else if inside && let Some(kb) = line.strip_prefix("AnonHugePages:") {
                return kb
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse()
                    .expect("a size");
            }
        }
        0
    }

    /// The range of a mapping's header line in smaps.
    fn mapping_range(line: &str) -> Option<std::ops::Range<usize>> {
        let (start, end) = line.split_whitespace().next()?.split_once('-')?;
        Some(usize::from_str_radix(start, 16).ok()?..usize::from_str_radix(end, 16).ok()?)
    }

    #[test]
    fn memory_in_use_moves_into_huge_pages_holding_the_same_values() {
        let huge_page = huge_page_size().unwrap_or(2 << 20);
        let values: Vec<u64> = (0..(4 * huge_page / 8) as u64).collect();
        let collapsed = collapse_resident();
        assert!(values.iter().copied().eq(0..values.len() as u64));
        if collapsed.unsupported {
            // An older kernel, or one without huge pages: nothing moves, and nothing is counted.
            assert_eq!(collapsed.bytes, 0);
        } else {
            assert!(collapsed.bytes >= 3 * huge_page, "{collapsed:?}");
            assert!(huge_kb_at(values.as_ptr() as usize) >= 3 * huge_page / 1024);
        }
    }
}
