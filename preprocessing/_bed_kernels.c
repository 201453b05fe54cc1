/*
 * Compiled kernels over packed PLINK .bed rows and genotype counts.
 *
 * A .bed row holds one SNP: 2 bits per sample, four samples per byte, the first sample in
 * the lowest bits; codes 00 = hom A1, 01 = missing, 10 = het, 11 = hom A2.  Rows are read
 * as little-endian 64-bit words (32 samples each).  For a word w, lo = w & 0x55.., hi =
 * (w >> 1) & 0x55..; popcounts of lo, hi and lo & hi under a sample mask give every
 * genotype count of that subset (see preprocessing/bed_kernels.py).
 *
 * Every function releases the GIL, so callers may split rows across threads.
 * The pure-numpy fallbacks in bed_kernels.py define the same results.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <errno.h>
#include <string.h>
#include <unistd.h>

#define M5 0x5555555555555555ULL

/* The counting loop, compiled twice: with the hardware popcount instruction where the CPU
 * has it (chosen at run time), and portable. */
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define HAVE_POPCNT_VARIANT 1
#define POPCNT_TARGET __attribute__((target("popcnt")))
#else
#define HAVE_POPCNT_VARIANT 0
#define POPCNT_TARGET
#endif

/* Load word k (8 bytes) of a row of nb bytes; bytes past the row end read as zero. */
static inline uint64_t load_word(const uint8_t *row, Py_ssize_t nb, Py_ssize_t k) {
    uint64_t w = 0;
    Py_ssize_t start = k * 8;
    Py_ssize_t len = nb - start;
    if (len >= 8) {
        memcpy(&w, row + start, 8);
    } else if (len > 0) {
        memcpy(&w, row + start, (size_t)len);
    }
    return w;
}

#define COUNT_ROWS_BODY                                                                    \
    Py_ssize_t n_words = (nb + 7) / 8;                                                     \
    for (Py_ssize_t r = 0; r < n_rows; r++) {                                              \
        const uint8_t *row = base + (row_start + r) * nb;                                  \
        uint32_t acc[16 * 3];                                                              \
        memset(acc, 0, sizeof(acc));                                                       \
        for (Py_ssize_t k = 0; k < n_words; k++) {                                         \
            uint64_t w = load_word(row, nb, k);                                            \
            uint64_t lo = w & M5;                                                          \
            uint64_t hi = (w >> 1) & M5;                                                   \
            uint64_t both = lo & hi;                                                       \
            for (Py_ssize_t m = 0; m < n_masks; m++) {                                     \
                uint64_t msk = mk[m * n_words + k];                                        \
                acc[3 * m] += __builtin_popcountll(lo & msk);                              \
                acc[3 * m + 1] += __builtin_popcountll(hi & msk);                          \
                acc[3 * m + 2] += __builtin_popcountll(both & msk);                        \
            }                                                                              \
        }                                                                                  \
        for (Py_ssize_t q = 0; q < n_masks * 3; q++) res[q * res_stride + r] = acc[q];       \
    }

#if HAVE_POPCNT_VARIANT
POPCNT_TARGET static void count_rows_popcnt(const uint8_t *base, Py_ssize_t nb,
                                            Py_ssize_t row_start, Py_ssize_t n_rows,
                                            const uint64_t *mk, Py_ssize_t n_masks,
                                            uint32_t *res, Py_ssize_t res_stride) {
    COUNT_ROWS_BODY
}
#endif

#if HAVE_POPCNT_VARIANT && defined(__x86_64__)
#include <immintrin.h>
#define HAVE_AVX512_VARIANT 1
/* The same counts, 512 bits (256 samples) at a time with AVX-512 VPOPCNTQ: the row is read
 * with byte-masked loads (nothing past its end), mask words with lane-masked loads. */
__attribute__((target("avx512f,avx512bw,avx512vpopcntdq"))) static void count_rows_avx512(
    const uint8_t *base, Py_ssize_t nb, Py_ssize_t row_start, Py_ssize_t n_rows,
    const uint64_t *mk, Py_ssize_t n_masks, uint32_t *res, Py_ssize_t res_stride) {
    Py_ssize_t n_words = (nb + 7) / 8;
    Py_ssize_t n_vec = (nb + 63) / 64;
    const __m512i m5 = _mm512_set1_epi64((long long)M5);
    for (Py_ssize_t r = 0; r < n_rows; r++) {
        const uint8_t *row = base + (row_start + r) * nb;
        __m512i acc[16 * 3];
        for (Py_ssize_t q = 0; q < n_masks * 3; q++) acc[q] = _mm512_setzero_si512();
        for (Py_ssize_t v = 0; v < n_vec; v++) {
            Py_ssize_t left = nb - 64 * v;
            __mmask64 bytes = left >= 64 ? ~(__mmask64)0 : (((__mmask64)1 << left) - 1);
            Py_ssize_t lanes_left = n_words - 8 * v;
            __mmask8 lanes = lanes_left >= 8 ? (__mmask8)0xFF : (__mmask8)((1u << lanes_left) - 1);
            __m512i w = _mm512_maskz_loadu_epi8(bytes, row + 64 * v);
            __m512i lo = _mm512_and_si512(w, m5);
            __m512i hi = _mm512_and_si512(_mm512_srli_epi64(w, 1), m5);
            __m512i both = _mm512_and_si512(lo, hi);
            for (Py_ssize_t m = 0; m < n_masks; m++) {
                __m512i msk = _mm512_maskz_loadu_epi64(lanes, mk + m * n_words + 8 * v);
                acc[3 * m] = _mm512_add_epi64(acc[3 * m], _mm512_popcnt_epi64(_mm512_and_si512(lo, msk)));
                acc[3 * m + 1] =
                    _mm512_add_epi64(acc[3 * m + 1], _mm512_popcnt_epi64(_mm512_and_si512(hi, msk)));
                acc[3 * m + 2] =
                    _mm512_add_epi64(acc[3 * m + 2], _mm512_popcnt_epi64(_mm512_and_si512(both, msk)));
            }
        }
        for (Py_ssize_t q = 0; q < n_masks * 3; q++) {
            res[q * res_stride + r] = (uint32_t)_mm512_reduce_add_epi64(acc[q]);
        }
    }
}
#else
#define HAVE_AVX512_VARIANT 0
#endif

static void count_rows_generic(const uint8_t *base, Py_ssize_t nb, Py_ssize_t row_start,
                               Py_ssize_t n_rows, const uint64_t *mk, Py_ssize_t n_masks,
                               uint32_t *res, Py_ssize_t res_stride) {
    COUNT_ROWS_BODY
}

/* Whether the kernels may use the CPU's optional instructions (AVX-512 VPOPCNTQ for counts);
 * set_cpu_extensions(False) tests the portable paths. */
static int use_cpu_extensions = 1;

static PyObject *set_cpu_extensions(PyObject *self, PyObject *arg) {
    int old = use_cpu_extensions;
    use_cpu_extensions = PyObject_IsTrue(arg);
    return PyBool_FromLong(old);
}

static PyObject *have_avx512(PyObject *self, PyObject *unused) {
#if HAVE_AVX512_VARIANT
    return PyBool_FromLong(__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                           __builtin_cpu_supports("avx512vpopcntdq"));
#else
    Py_RETURN_FALSE;
#endif
}

/* The counting loop for this CPU: AVX-512, hardware popcount, or portable. */
static void count_rows_best(const uint8_t *base, Py_ssize_t nb, Py_ssize_t row_start,
                            Py_ssize_t n_rows, const uint64_t *mk, Py_ssize_t n_masks,
                            uint32_t *res, Py_ssize_t res_stride) {
#if HAVE_AVX512_VARIANT
    if (use_cpu_extensions && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vpopcntdq")) {
        count_rows_avx512(base, nb, row_start, n_rows, mk, n_masks, res, res_stride);
        return;
    }
#endif
#if HAVE_POPCNT_VARIANT
    if (__builtin_cpu_supports("popcnt")) {
        count_rows_popcnt(base, nb, row_start, n_rows, mk, n_masks, res, res_stride);
        return;
    }
#endif
    count_rows_generic(base, nb, row_start, n_rows, mk, n_masks, res, res_stride);
}

/* count_masks(bed, nb, row_start, row_stop, masks, n_masks, out, out_stride)
 * bed: the genotype bytes (row r at r * nb); masks: n_masks x W uint64 words with bit 2s
 * set for sample s in the subset; out: uint32 (n_masks x 3) x out_stride, row r of the call
 * at column r: popcount(lo), popcount(hi), popcount(lo & hi) per mask. */
static PyObject *count_masks(PyObject *self, PyObject *args) {
    Py_buffer bed, masks, out;
    Py_ssize_t nb, row_start, row_stop, n_masks, res_stride;
    if (!PyArg_ParseTuple(args, "y*nnny*nw*n", &bed, &nb, &row_start, &row_stop, &masks,
                          &n_masks, &out, &res_stride)) {
        return NULL;
    }
    Py_ssize_t n_words = (nb + 7) / 8;
    Py_ssize_t n_rows = row_stop - row_start;
    int ok = row_start >= 0 && row_stop >= row_start && row_stop * nb <= bed.len &&
             masks.len >= (Py_ssize_t)(n_masks * n_words * 8) && n_masks <= 16 &&
             res_stride >= n_rows &&
             out.len >= (Py_ssize_t)(((n_masks * 3 - 1) * res_stride + n_rows) * 4);
    if (ok) {
        const uint8_t *base = (const uint8_t *)bed.buf;
        const uint64_t *mk = (const uint64_t *)masks.buf;
        uint32_t *res = (uint32_t *)out.buf;
        Py_BEGIN_ALLOW_THREADS
        count_rows_best(base, nb, row_start, n_rows, mk, n_masks, res, res_stride);
        Py_END_ALLOW_THREADS
    }
    PyBuffer_Release(&bed);
    PyBuffer_Release(&masks);
    PyBuffer_Release(&out);
    if (!ok) {
        PyErr_SetString(PyExc_ValueError, "count_masks: buffer sizes do not match");
        return NULL;
    }
    Py_RETURN_NONE;
}

/* group_counts(bed, nb, row_start, row_stop, masks, n_masks, sizes, slots, out, col, n_out)
 * GroupCounts of rows row_start:row_stop written straight into out: int32 (n_slots, 4, n_out)
 * [hom A1, het, hom A2, missing], columns col.. of it.  Slot g counts the samples of mask
 * slots[g] (int32; -1: the slot stays zero); sizes[m] is mask m's sample count. */
static PyObject *group_counts(PyObject *self, PyObject *args) {
    Py_buffer bed, masks, sizes, slots, out;
    Py_ssize_t nb, row_start, row_stop, n_masks, col, n_out;
    if (!PyArg_ParseTuple(args, "y*nnny*ny*y*w*nn", &bed, &nb, &row_start, &row_stop, &masks,
                          &n_masks, &sizes, &slots, &out, &col, &n_out)) {
        return NULL;
    }
    Py_ssize_t n_words = (nb + 7) / 8, n_rows = row_stop - row_start, n_slots = slots.len / 4;
    const int32_t *slot = slots.buf;
    int ok = row_start >= 0 && row_stop >= row_start && row_stop * nb <= bed.len &&
             masks.len >= (Py_ssize_t)(n_masks * n_words * 8) && n_masks <= 16 &&
             sizes.len >= n_masks * 4 && col >= 0 && col + n_rows <= n_out &&
             out.len >= (Py_ssize_t)(n_slots * 4 * n_out * 4);
    for (Py_ssize_t g = 0; ok && g < n_slots; g++) ok = slot[g] >= -1 && slot[g] < n_masks;
    uint32_t *raw = NULL;
    if (ok && n_rows) {
        raw = PyMem_RawMalloc(sizeof(uint32_t) * (size_t)(n_masks * 3 * n_rows + 1));
        ok = raw != NULL;
    }
    if (ok && n_rows) {
        const int32_t *size = sizes.buf;
        int32_t *o = out.buf;
        Py_BEGIN_ALLOW_THREADS
        count_rows_best((const uint8_t *)bed.buf, nb, row_start, n_rows,
                        (const uint64_t *)masks.buf, n_masks, raw, n_rows);
        for (Py_ssize_t g = 0; g < n_slots; g++) {
            int32_t *dst = o + g * 4 * n_out + col;
            if (slot[g] < 0) {
                for (Py_ssize_t k = 0; k < 4; k++) memset(dst + k * n_out, 0, 4 * (size_t)n_rows);
                continue;
            }
            const uint32_t *lo = raw + (3 * slot[g]) * n_rows, *hi = lo + n_rows,
                           *both = hi + n_rows;
            int32_t n = size[slot[g]];
            for (Py_ssize_t r = 0; r < n_rows; r++) {
                int32_t l = (int32_t)lo[r], h = (int32_t)hi[r], b = (int32_t)both[r];
                dst[r] = n - l - h + b;
                dst[n_out + r] = h - b;
                dst[2 * n_out + r] = b;
                dst[3 * n_out + r] = l - b;
            }
        }
        Py_END_ALLOW_THREADS
    }
    PyMem_RawFree(raw);
    PyBuffer_Release(&bed);
    PyBuffer_Release(&masks);
    PyBuffer_Release(&sizes);
    PyBuffer_Release(&slots);
    PyBuffer_Release(&out);
    if (!ok) {
        PyErr_SetString(PyExc_ValueError, "group_counts: buffer sizes do not match");
        return NULL;
    }
    Py_RETURN_NONE;
}

/* Per-sample missing counts by vertical (bit-sliced) counters: the missing flags of a word
 * (one 2-bit field per sample, value 0/1) are added into 2-bit fields for 3 rows, then split
 * into 4-bit fields (even / odd samples) for 15 rows, then into 8-bit fields for 255 rows,
 * and only then added to the per-sample totals: a few word operations per row and word,
 * whatever the missing rate. */
#define M3 0x3333333333333333ULL
#define M0F 0x0F0F0F0F0F0F0F0FULL

typedef struct {
    Py_ssize_t n_words;
    uint64_t *a, *be, *bo, *c; /* 2-bit; 4-bit even / odd samples; 8-bit (4 per word) */
    int na, nb, nc;            /* rows, A-flushes, B-flushes held in each level */
} MissingAcc;

static void flush_c(MissingAcc *m, uint32_t *res) {
    for (Py_ssize_t k = 0; k < m->n_words; k++) {
        for (int t = 0; t < 4; t++) {
            uint64_t v = m->c[4 * k + t];
            for (int q = 0; q < 8 && v; q++, v >>= 8) res[32 * k + 4 * q + t] += (uint32_t)(v & 0xFF);
            m->c[4 * k + t] = 0;
        }
    }
    m->nc = 0;
}

static void flush_b(MissingAcc *m, uint32_t *res) {
    for (Py_ssize_t k = 0; k < m->n_words; k++) {
        uint64_t be = m->be[k], bo = m->bo[k];
        m->c[4 * k] += be & M0F;            /* samples 4q */
        m->c[4 * k + 1] += bo & M0F;        /* 4q + 1 */
        m->c[4 * k + 2] += (be >> 4) & M0F; /* 4q + 2 */
        m->c[4 * k + 3] += (bo >> 4) & M0F; /* 4q + 3 */
        m->be[k] = m->bo[k] = 0;
    }
    m->nb = 0;
    if (++m->nc == 17) flush_c(m, res); /* 17 x 15 = 255 per byte */
}

static void flush_a(MissingAcc *m, uint32_t *res) {
    for (Py_ssize_t k = 0; k < m->n_words; k++) {
        m->be[k] += m->a[k] & M3;
        m->bo[k] += (m->a[k] >> 2) & M3;
        m->a[k] = 0;
    }
    m->na = 0;
    if (++m->nb == 5) flush_b(m, res); /* 5 x 3 = 15 per nibble */
}

/* Adds the missing flags of `rows` consecutive rows into the accumulator. */
static void missing_rows(MissingAcc *m, const uint8_t *base, Py_ssize_t nb, Py_ssize_t rows,
                         const uint64_t *mk, uint32_t *res) {
    for (Py_ssize_t r = 0; r < rows; r++) {
        const uint8_t *row = base + r * nb;
        for (Py_ssize_t k = 0; k < m->n_words; k++) {
            uint64_t w = load_word(row, nb, k);
            m->a[k] += w & ~(w >> 1) & mk[k];
        }
        if (++m->na == 3) flush_a(m, res);
    }
}

static void flush_all(MissingAcc *m, uint32_t *res) {
    flush_a(m, res);
    flush_b(m, res);
    flush_c(m, res);
}

/* sample_missing(bed, nb, row_start, row_stop, mask, out): out[s] += number of rows where
 * sample s (selected by mask, 2s bits) has the missing code 01.  out: uint32, >= 32 * W. */
static PyObject *sample_missing(PyObject *self, PyObject *args) {
    Py_buffer bed, mask, out;
    Py_ssize_t nb, row_start, row_stop;
    if (!PyArg_ParseTuple(args, "y*nnny*w*", &bed, &nb, &row_start, &row_stop, &mask, &out)) {
        return NULL;
    }
    Py_ssize_t n_words = (nb + 7) / 8;
    int ok = row_start >= 0 && row_stop >= row_start && row_stop * nb <= bed.len &&
             mask.len >= n_words * 8 && out.len >= n_words * 32 * 4;
    uint64_t *state = ok ? PyMem_RawCalloc((size_t)(7 * n_words + 1), sizeof(uint64_t)) : NULL;
    if (ok && state == NULL) ok = 0;
    if (ok) {
        const uint8_t *base = (const uint8_t *)bed.buf;
        const uint64_t *mk = (const uint64_t *)mask.buf;
        uint32_t *res = (uint32_t *)out.buf;
        MissingAcc m = {n_words, state, state + n_words, state + 2 * n_words,
                        state + 3 * n_words, 0, 0, 0};
        Py_BEGIN_ALLOW_THREADS
        missing_rows(&m, base + row_start * nb, nb, row_stop - row_start, mk, res);
        flush_all(&m, res);
        Py_END_ALLOW_THREADS
    }
    PyMem_RawFree(state);
    PyBuffer_Release(&bed);
    PyBuffer_Release(&mask);
    PyBuffer_Release(&out);
    if (!ok) {
        PyErr_SetString(PyExc_ValueError, "sample_missing: buffer sizes do not match");
        return NULL;
    }
    Py_RETURN_NONE;
}

/* sample_missing_file(fd, offset, nb, n_rows, mask, out): sample_missing over rows 0..n_rows
 * of a file, row 0 at byte `offset`, read block by block (pread) without the GIL for the whole
 * pass.  Returns 0, or the errno of a failed read (-1: the file ended early). */
#define FILE_BLOCK_BYTES (1 << 21)
static PyObject *sample_missing_file(PyObject *self, PyObject *args) {
    int fd;
    Py_buffer mask, out;
    Py_ssize_t offset, nb, n_rows;
    if (!PyArg_ParseTuple(args, "innny*w*", &fd, &offset, &nb, &n_rows, &mask, &out)) {
        return NULL;
    }
    Py_ssize_t n_words = (nb + 7) / 8;
    int ok = nb > 0 && n_rows >= 0 && offset >= 0 && mask.len >= n_words * 8 &&
             out.len >= n_words * 32 * 4;
    Py_ssize_t block_rows = FILE_BLOCK_BYTES / nb > 16 ? FILE_BLOCK_BYTES / nb : 16;
    uint64_t *state = ok ? PyMem_RawCalloc((size_t)(7 * n_words + 1), sizeof(uint64_t)) : NULL;
    uint8_t *buf = ok ? PyMem_RawMalloc((size_t)(block_rows * nb)) : NULL;
    int err = 0;
    if (ok && (state == NULL || buf == NULL)) {
        PyMem_RawFree(state);
        PyMem_RawFree(buf);
        PyBuffer_Release(&mask);
        PyBuffer_Release(&out);
        return PyErr_NoMemory();
    }
    if (ok) {
        const uint64_t *mk = (const uint64_t *)mask.buf;
        uint32_t *res = (uint32_t *)out.buf;
        MissingAcc m = {n_words, state, state + n_words, state + 2 * n_words,
                        state + 3 * n_words, 0, 0, 0};
        Py_BEGIN_ALLOW_THREADS
        for (Py_ssize_t r0 = 0; r0 < n_rows && !err; r0 += block_rows) {
            Py_ssize_t rows = n_rows - r0 < block_rows ? n_rows - r0 : block_rows;
            Py_ssize_t want = rows * nb, done = 0;
            while (done < want) {
                ssize_t got = pread(fd, buf + done, (size_t)(want - done),
                                    (off_t)(offset + r0 * nb + done));
                if (got <= 0) {
                    err = got < 0 ? errno : -1;
                    break;
                }
                done += got;
            }
            if (!err) missing_rows(&m, buf, nb, rows, mk, res);
        }
        flush_all(&m, res);
        Py_END_ALLOW_THREADS
    }
    PyMem_RawFree(state);
    PyMem_RawFree(buf);
    PyBuffer_Release(&mask);
    PyBuffer_Release(&out);
    if (!ok) {
        PyErr_SetString(PyExc_ValueError, "sample_missing_file: buffer sizes do not match");
        return NULL;
    }
    return PyLong_FromLong(err);
}

/* count_byte(buf, byte): occurrences of one byte value (memchr), without the GIL. */
static PyObject *count_byte(PyObject *self, PyObject *args) {
    Py_buffer buf;
    int byte;
    if (!PyArg_ParseTuple(args, "y*i", &buf, &byte)) return NULL;
    Py_ssize_t n = 0;
    Py_BEGIN_ALLOW_THREADS
    const char *p = buf.buf, *end = p + buf.len;
    while (p < end && (p = memchr(p, byte, (size_t)(end - p))) != NULL) {
        n++;
        p++;
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&buf);
    return PyLong_FromSsize_t(n);
}

/* A piece of an output word: the n_bits bits of the source row from src_bit on (mask: n_bits
 * ones) go to bits [dst, dst + n_bits) of the output word.  Most output words are one piece
 * (64 bits from a run of kept samples). */
typedef struct {
    int64_t src_bit;
    uint64_t mask;
    int32_t dst;
} Piece;

/* 64 bits of a row of words from bit `bit` on; words[bit / 64 + 1] must be readable. */
static inline uint64_t bits_at(const uint64_t *words, int64_t bit) {
    int64_t k = bit >> 6;
    int sh = (int)(bit & 63);
#ifdef __SIZEOF_INT128__
    return (uint64_t)((((unsigned __int128)words[k + 1] << 64) | words[k]) >> sh);
#else
    return sh ? (words[k] >> sh) | (words[k + 1] << (64 - sh)) : words[k];
#endif
}

/* Swap hom A1 (00) and hom A2 (11) in each 2-bit field of a byte. */
static uint8_t reverse_lut[256];

static void init_reverse_lut(void) {
    for (int b = 0; b < 256; b++) {
        uint8_t v = 0;
        for (int f = 0; f < 4; f++) {
            uint8_t c = (uint8_t)((b >> (2 * f)) & 3);
            if (c == 0 || c == 3) {
                c ^= 3;
            }
            v |= (uint8_t)(c << (2 * f));
        }
        reverse_lut[b] = v;
    }
}

/* extract_rows(bed, nb, rows, reverse, keep, n_keep, out)
 * Writes the rows listed in `rows` (int64) to out (n_rows x ceil(n_keep / 4) bytes),
 * keeping the samples listed in `keep` (int64, ascending); an empty `keep` keeps all
 * samples.  Rows with reverse[i] != 0 get A1/A2 swapped.  Padding bits are written as 0. */
static PyObject *extract_rows(PyObject *self, PyObject *args) {
    Py_buffer bed, rows, rev, keep, out;
    Py_ssize_t nb, n_keep;
    if (!PyArg_ParseTuple(args, "y*ny*y*y*nw*", &bed, &nb, &rows, &rev, &keep, &n_keep, &out)) {
        return NULL;
    }
    Py_ssize_t n_rows = rows.len / 8;
    Py_ssize_t nb_out = (n_keep + 3) / 4;
    Py_ssize_t n_keep_listed = keep.len / 8;
    int all_samples = n_keep_listed == 0;
    int ok = rev.len >= n_rows && out.len >= n_rows * nb_out &&
             (all_samples ? nb_out == nb : n_keep_listed == n_keep);
    const int64_t *row_idx = (const int64_t *)rows.buf;
    const int64_t *keep_idx = (const int64_t *)keep.buf;
    for (Py_ssize_t i = 0; ok && i < n_rows; i++) {
        ok = row_idx[i] >= 0 && (row_idx[i] + 1) * nb <= bed.len;
    }
    for (Py_ssize_t i = 0; ok && i < n_keep_listed; i++) {
        ok = keep_idx[i] >= 0 && keep_idx[i] < nb * 4 && (i == 0 || keep_idx[i] > keep_idx[i - 1]);
    }
    /* Kept samples as pieces of the output words: a piece is a run of kept samples that are
     * consecutive in the source and land in one output word.  Each row is copied into a
     * zero-padded word buffer, then each output word is the OR of its pieces. */
    Py_ssize_t n_src_words = (nb + 7) / 8, n_words_out = (n_keep + 31) / 32;
    Piece *pieces = NULL;
    int32_t *first_piece = NULL;
    uint64_t *words = NULL, *row_words = NULL;
    if (ok && !all_samples) {
        pieces = PyMem_RawMalloc(sizeof(Piece) * (size_t)(n_keep + 1));
        first_piece = PyMem_RawMalloc(sizeof(int32_t) * (size_t)(n_words_out + 1));
        words = PyMem_RawMalloc(sizeof(uint64_t) * (size_t)(n_words_out + 1));
        row_words = PyMem_RawCalloc((size_t)(n_src_words + 2), sizeof(uint64_t));
        if (pieces == NULL || first_piece == NULL || words == NULL || row_words == NULL) {
            ok = 0;
        }
        Py_ssize_t n_pieces = 0;
        for (Py_ssize_t j = 0; ok && j < n_keep; j++) {
            if ((j & 31) == 0) first_piece[j >> 5] = (int32_t)n_pieces;
            if ((j & 31) && keep_idx[j] == keep_idx[j - 1] + 1) {
                Piece *p = pieces + n_pieces - 1;
                p->mask = (p->mask << 2) | 3;
            } else {
                pieces[n_pieces].src_bit = 2 * keep_idx[j];
                pieces[n_pieces].mask = 3;
                pieces[n_pieces].dst = (int32_t)(2 * (j & 31));
                n_pieces++;
            }
        }
        if (ok) first_piece[n_words_out] = (int32_t)n_pieces;
    }
    if (ok) {
        const uint8_t *base = (const uint8_t *)bed.buf;
        const uint8_t *flip = (const uint8_t *)rev.buf;
        uint8_t *dst = (uint8_t *)out.buf;
        uint8_t tail_mask = (n_keep % 4) ? (uint8_t)((1u << (2 * (n_keep % 4))) - 1) : 0xFF;
        Py_BEGIN_ALLOW_THREADS
        for (Py_ssize_t i = 0; i < n_rows; i++) {
            const uint8_t *src = base + row_idx[i] * nb;
            uint8_t *o = dst + i * nb_out;
            if (all_samples) {
                memcpy(o, src, (size_t)nb);
            } else {
                memcpy(row_words, src, (size_t)nb); /* the padding words stay zero */
                for (Py_ssize_t j = 0; j < n_words_out; j++) {
                    uint64_t w = 0;
                    for (int32_t q = first_piece[j]; q < first_piece[j + 1]; q++) {
                        w |= (bits_at(row_words, pieces[q].src_bit) & pieces[q].mask) << pieces[q].dst;
                    }
                    if (flip[i]) {
                        uint64_t eq = ~(w ^ (w >> 1)) & M5; /* as below */
                        w ^= eq | (eq << 1);
                    }
                    words[j] = w;
                }
                memcpy(o, words, (size_t)nb_out);
            }
            if (flip[i] && all_samples) {
                Py_ssize_t j = 0;
                for (; j + 8 <= nb_out; j += 8) {
                    uint64_t w;
                    memcpy(&w, o + j, 8);
                    /* fields whose two bits are equal (00, 11) are inverted; 01, 10 kept */
                    uint64_t eq = ~(w ^ (w >> 1)) & M5;
                    w ^= eq | (eq << 1);
                    memcpy(o + j, &w, 8);
                }
                for (; j < nb_out; j++) o[j] = reverse_lut[o[j]];
            }
            if (nb_out) {
                o[nb_out - 1] &= tail_mask;
            }
        }
        Py_END_ALLOW_THREADS
    }
    PyMem_RawFree(pieces);
    PyMem_RawFree(first_piece);
    PyMem_RawFree(words);
    PyMem_RawFree(row_words);
    PyBuffer_Release(&bed);
    PyBuffer_Release(&rows);
    PyBuffer_Release(&rev);
    PyBuffer_Release(&keep);
    PyBuffer_Release(&out);
    if (!ok) {
        PyErr_SetString(PyExc_ValueError, "extract_rows: indices or buffer sizes out of range");
        return NULL;
    }
    Py_RETURN_NONE;
}

/* ---- Hardy-Weinberg exact test (Wigginton, Cutler and Abecasis 2005) ----
 * With n genotypes and `rare` copies of the rarer allele, the het count h has the same
 * parity as rare; with homr = (rare - h) / 2 and homc = n - h - homr,
 *   P(h + 2) / P(h) = 4 homr homc / ((h + 2)(h + 1)).
 * Configurations no more likely than the observed one (relative tolerance HWE_TOL) form the
 * tail; p = tail / total.  Mid-p subtracts half the probability of the configurations that
 * tie with the observed one. */
#define HWE_TOL 1e-12

static inline double ratio_up(double h, double homr, double homc) {
    return 4.0 * homr * homc / ((h + 2.0) * (h + 1.0));
}

static inline double ratio_down(double h, double homr, double homc) {
    return h * (h - 1.0) / (4.0 * (homr + 1.0) * (homc + 1.0));
}

static double hwe_p(int64_t het, int64_t hom1, int64_t hom2, int midp) {
    int64_t n = het + hom1 + hom2;
    if (n <= 0) {
        return midp ? 0.5 : 1.0;
    }
    int64_t homr0 = hom1 < hom2 ? hom1 : hom2;
    int64_t rare = 2 * homr0 + het;
    int64_t mid = (int64_t)(((double)rare * (double)(2 * n - rare)) / (double)(2 * n));
    if ((rare - mid) & 1) {
        mid++;
    }
    if (mid > rare) {
        mid -= 2;
    }
    /* probability of the observed count relative to the mode-ish start */
    double p_obs = 1.0;
    {
        double h = (double)mid, homr = (double)((rare - mid) / 2), homc = (double)(n - mid) - homr;
        while (h < (double)het) {
            p_obs *= ratio_up(h, homr, homc);
            h += 2.0;
            homr -= 1.0;
            homc -= 1.0;
        }
        while (h > (double)het) {
            p_obs *= ratio_down(h, homr, homc);
            h -= 2.0;
            homr += 1.0;
            homc += 1.0;
        }
    }
    double hi_lim = p_obs * (1.0 + HWE_TOL);
    double lo_lim = p_obs * (1.0 - HWE_TOL);
    double total = 1.0, tail = 0.0;
    int ties = 0;
    if (1.0 <= hi_lim) {
        tail = 1.0;
        ties += 1.0 >= lo_lim;
    }
    for (int dir = -1; dir <= 1; dir += 2) {
        double p = 1.0;
        double h = (double)mid, homr = (double)((rare - mid) / 2), homc = (double)(n - mid) - homr;
        for (;;) {
            if (dir < 0) {
                if (h < 1.5) break;
                p *= ratio_down(h, homr, homc);
                h -= 2.0;
                homr += 1.0;
                homc += 1.0;
            } else {
                if (homr < 0.5) break;
                p *= ratio_up(h, homr, homc);
                h += 2.0;
                homr -= 1.0;
                homc -= 1.0;
            }
            total += p;
            if (p <= hi_lim) {
                tail += p;
                ties += p >= lo_lim;
                /* Past the observed count terms fall geometrically: stop once they no
                 * longer change the tail sum. */
                if (p == 0.0 || p < tail * 1e-17) break;
            }
        }
    }
    double pv = midp ? (tail - 0.5 * p_obs * ties) / total : tail / total;
    return pv > 1.0 ? 1.0 : pv;
}

/* Threshold test: 1 when p < thresh.  Walks from the observed count (probability 1)
 * towards the mode to sum the centre C, then adds tail terms only until the decision is
 * certain (geometric upper bounds on what is left), which is a few terms for most SNPs. */
static int hwe_fails(int64_t het, int64_t hom1, int64_t hom2, double thresh, int midp) {
    int64_t n = het + hom1 + hom2;
    if (n <= 0) {
        return midp ? 0.5 < thresh : 0;
    }
    int64_t homr0 = hom1 < hom2 ? hom1 : hom2;
    int64_t homc0 = hom1 < hom2 ? hom2 : hom1;
    int64_t rare = 2 * homr0 + het;
    double n_configs = (double)(rare / 2 + 1);
    double hi_lim = 1.0 + HWE_TOL, lo_lim = 1.0 - HWE_TOL;
    /* direction towards the mode */
    double h0 = (double)het, r0 = (double)homr0, c0 = (double)homc0;
    int dir = (r0 >= 0.5 && ratio_up(h0, r0, c0) > 1.0) ? 1 : -1;
    double centre = 0.0, tail = 1.0, ties = 1.0;
    double h = h0, homr = r0, homc = c0, p = 1.0;
    int far_open = 0; /* the far side (beyond the mode) still has terms */
    for (;;) {
        if (dir < 0 ? h < 1.5 : homr < 0.5) break;
        if (dir < 0) {
            p *= ratio_down(h, homr, homc);
            h -= 2.0;
            homr += 1.0;
            homc += 1.0;
        } else {
            p *= ratio_up(h, homr, homc);
            h += 2.0;
            homr -= 1.0;
            homc -= 1.0;
        }
        if (p > hi_lim) {
            centre += p;
            if (thresh * centre > n_configs * (1.0 - thresh)) return 1;
        } else {
            tail += p;
            ties += p >= lo_lim;
            far_open = 1;
            break;
        }
    }
    double half_ties = midp ? 0.5 * ties : 0.0;
    double need = thresh * centre; /* pass iff tail (1 - thresh) - half_ties >= need */
    if (tail * (1.0 - thresh) - half_ties >= need) return 0;
    /* PLINK 1.9 (--hwe, with or without midp) decides here from the observed count and the
     * first far-side term only, and reports a failure whenever neither side has a further
     * term to sum, even if the first near-side term would reach the threshold.  Follow it,
     * so that the kept SNP set is the one plink1.9 writes. */
    {
        int near_more = dir > 0 ? het >= 4 : homr0 > 1;
        int far_more = dir > 0 ? homr > 0.5 : h > 1.5;
        if (!near_more && !far_more) return 1;
    }
    /* continue both tails: far side from (h, p) in dir, near side from the observed count */
    double fh = h, fr = homr, fc = homc, fp = p;
    double nh = h0, nr = r0, nc = c0, np_ = 1.0;
    int near_open = 1;
    while (far_open || near_open) {
        double bound = 0.0;
        if (far_open) {
            if (dir < 0 ? fh < 1.5 : fr < 0.5) {
                far_open = 0;
            } else {
                double q = dir < 0 ? ratio_down(fh, fr, fc) : ratio_up(fh, fr, fc);
                fp *= q;
                if (dir < 0) {
                    fh -= 2.0;
                    fr += 1.0;
                    fc += 1.0;
                } else {
                    fh += 2.0;
                    fr -= 1.0;
                    fc -= 1.0;
                }
                tail += fp;
                if (fp == 0.0) far_open = 0;
                else if (q < 1.0) bound += fp * q / (1.0 - q);
                else bound = INFINITY;
            }
        }
        if (near_open) {
            if (dir > 0 ? nh < 1.5 : nr < 0.5) {
                near_open = 0;
            } else {
                double q = dir > 0 ? ratio_down(nh, nr, nc) : ratio_up(nh, nr, nc);
                np_ *= q;
                if (dir > 0) {
                    nh -= 2.0;
                    nr += 1.0;
                    nc += 1.0;
                } else {
                    nh += 2.0;
                    nr -= 1.0;
                    nc -= 1.0;
                }
                tail += np_;
                if (np_ == 0.0) near_open = 0;
                else if (q < 1.0) bound += np_ * q / (1.0 - q);
                else bound = INFINITY;
            }
        }
        if (tail * (1.0 - thresh) - half_ties >= need) return 0;
        if ((tail + bound) * (1.0 - thresh) - half_ties < need * (1.0 - 1e-9)) return 1;
    }
    return tail * (1.0 - thresh) - half_ties < need;
}

/* hwe_pvalues(het, hom1, hom2, midp, out): int64 count arrays -> float64 p-values. */
static PyObject *hwe_pvalues(PyObject *self, PyObject *args) {
    Py_buffer het, hom1, hom2, out;
    int midp;
    if (!PyArg_ParseTuple(args, "y*y*y*pw*", &het, &hom1, &hom2, &midp, &out)) {
        return NULL;
    }
    Py_ssize_t n = het.len / 8;
    int ok = hom1.len == het.len && hom2.len == het.len && out.len == het.len;
    if (ok) {
        const int64_t *a = het.buf, *b = hom1.buf, *c = hom2.buf;
        double *o = out.buf;
        Py_BEGIN_ALLOW_THREADS
        for (Py_ssize_t i = 0; i < n; i++) o[i] = hwe_p(a[i], b[i], c[i], midp);
        Py_END_ALLOW_THREADS
    }
    PyBuffer_Release(&het);
    PyBuffer_Release(&hom1);
    PyBuffer_Release(&hom2);
    PyBuffer_Release(&out);
    if (!ok) {
        PyErr_SetString(PyExc_ValueError, "hwe_pvalues: arrays must have equal lengths");
        return NULL;
    }
    Py_RETURN_NONE;
}

/* hwe_fail_mask(het, hom1, hom2, thresh, midp, out): out[i] = 1 when p_i < thresh. */
static PyObject *hwe_fail_mask(PyObject *self, PyObject *args) {
    Py_buffer het, hom1, hom2, out;
    double thresh;
    int midp;
    if (!PyArg_ParseTuple(args, "y*y*y*dpw*", &het, &hom1, &hom2, &thresh, &midp, &out)) {
        return NULL;
    }
    Py_ssize_t n = het.len / 8;
    int ok = hom1.len == het.len && hom2.len == het.len && out.len == n;
    if (ok) {
        const int64_t *a = het.buf, *b = hom1.buf, *c = hom2.buf;
        uint8_t *o = out.buf;
        Py_BEGIN_ALLOW_THREADS
        for (Py_ssize_t i = 0; i < n; i++) o[i] = (uint8_t)hwe_fails(a[i], b[i], c[i], thresh, midp);
        Py_END_ALLOW_THREADS
    }
    PyBuffer_Release(&het);
    PyBuffer_Release(&hom1);
    PyBuffer_Release(&hom2);
    PyBuffer_Release(&out);
    if (!ok) {
        PyErr_SetString(PyExc_ValueError, "hwe_fail_mask: arrays must have equal lengths");
        return NULL;
    }
    Py_RETURN_NONE;
}

/* ---- Variant filters of one block (preprocessing/qc.py::variant_filters, the reference) ----
 * counts: int32 (6 groups, 4 genotypes, n) GroupCounts [ALL, FOUNDERS, FOUNDER_CONTROLS,
 * MALES, MALE_FOUNDERS, MALE_FOUNDER_CONTROLS] x [hom A1, het, hom A2, missing]; chrom: int16
 * PLINK codes (n,).  flags: bit 0 --geno, bit 1 --hwe, bit 2 --maf, bit 3 mid-p, bit 4 HWE on
 * founder controls.  Thresholds are PLINK's, already scaled by (1 -+ 2^-44) by the caller.
 * Writes status (int8: 0 kept, 1 geno, 2 hwe, 3 maf, the first filter failed) and a2 (float64,
 * founder A2 frequency).  The floating-point steps are numpy's, in its order, so the results
 * are the reference's bit for bit. */
#define CH_X 23
#define CH_Y 24
#define CH_MT 26

static PyObject *variant_filters(PyObject *self, PyObject *args) {
    Py_buffer counts, chrom, status, a2;
    int flags;
    double geno_min, hwe_thresh, maf_min;
    if (!PyArg_ParseTuple(args, "y*y*idddw*w*", &counts, &chrom, &flags, &geno_min, &hwe_thresh,
                          &maf_min, &status, &a2)) {
        return NULL;
    }
    Py_ssize_t n = chrom.len / 2;
    int ok = counts.len == (Py_ssize_t)(24 * 4) * n && status.len == n && a2.len == 8 * n;
    if (ok) {
        const int32_t *c = counts.buf;
        const int16_t *ch = chrom.buf;
        int8_t *st = status.buf;
        double *f = a2.buf;
        int geno = flags & 1, hwe = flags & 2, maf = flags & 4, midp = (flags >> 3) & 1;
        int g = (flags & 16) ? 2 : 1, gm = (flags & 16) ? 5 : 4;
#define CNT(grp, k, i) c[((grp) * 4 + (k)) * n + (i)]
        Py_BEGIN_ALLOW_THREADS
        for (Py_ssize_t i = 0; i < n; i++) {
            int code = ch[i];
            int8_t s = 0;
            if (geno) {
                int grp = code == CH_Y ? 3 : 0;
                double called = (double)(CNT(grp, 0, i) + CNT(grp, 1, i) + CNT(grp, 2, i));
                double size = called + (double)CNT(grp, 3, i);
                double rate = size > 0 ? called * (1.0 / size) : 0.0;
                if (rate < geno_min) s = 1;
            }
            if (hwe && s == 0 && code != CH_Y && code != CH_MT) {
                int64_t het = CNT(g, 1, i), hom1 = CNT(g, 0, i), hom2 = CNT(g, 2, i);
                if (code == CH_X) {
                    het -= CNT(gm, 1, i);
                    hom1 -= CNT(gm, 0, i);
                    hom2 -= CNT(gm, 2, i);
                }
                if (hwe_fails(het, hom1, hom2, hwe_thresh, midp)) s = 2;
            }
            double d0 = CNT(1, 0, i), d1 = CNT(1, 1, i), d2 = CNT(1, 2, i), h0 = 0.0, h1 = 0.0;
            if (code == CH_X || code == CH_Y) {
                double m0 = CNT(4, 0, i), m1 = CNT(4, 1, i), m2 = CNT(4, 2, i);
                if (code == CH_Y) {
                    d0 = d1 = d2 = 0.0;
                } else {
                    d0 -= m0;
                    d1 -= m1;
                    d2 -= m2;
                }
                h0 = m0;
                h1 = m2;
            }
            double den = 2.0 * (d0 + d1 + d2) + h0 + h1;
            double num = 2.0 * d2 + d1 + h1;
            double freq = den > 0 ? num / den : 0.5;
            f[i] = freq;
            if (maf && s == 0 && (freq < 1.0 - freq ? freq : 1.0 - freq) < maf_min) s = 3;
            st[i] = s;
        }
        Py_END_ALLOW_THREADS
#undef CNT
    }
    PyBuffer_Release(&counts);
    PyBuffer_Release(&chrom);
    PyBuffer_Release(&status);
    PyBuffer_Release(&a2);
    if (!ok) {
        PyErr_SetString(PyExc_ValueError, "variant_filters: array sizes do not match");
        return NULL;
    }
    Py_RETURN_NONE;
}

/* json_strings(src, starts, ends, out): writes the JSON array items "a", "b", ... (json.dumps'
 * separators, no brackets) of the tokens src[starts[i]:ends[i]] (int64) to out, which holds at
 * least sum(length + 4) bytes.  Returns the bytes written, or -1 when a token has a byte that
 * JSON would escape (a quote, a backslash, a control or non-ASCII byte): the caller then
 * encodes those tokens itself. */
static PyObject *json_strings(PyObject *self, PyObject *args) {
    Py_buffer src, starts, ends, out;
    if (!PyArg_ParseTuple(args, "y*y*y*w*", &src, &starts, &ends, &out)) {
        return NULL;
    }
    Py_ssize_t n = starts.len / 8;
    const int64_t *a = starts.buf, *b = ends.buf;
    int ok = ends.len == starts.len;
    Py_ssize_t need = 0;
    for (Py_ssize_t i = 0; ok && i < n; i++) {
        ok = a[i] >= 0 && b[i] >= a[i] && b[i] <= src.len;
        need += b[i] - a[i] + 4;
    }
    ok = ok && need <= out.len + 2;
    Py_ssize_t written = 0;
    if (ok) {
        const uint8_t *s = src.buf;
        uint8_t *o = out.buf;
        Py_BEGIN_ALLOW_THREADS
        for (Py_ssize_t i = 0; i < n && written >= 0; i++) {
            if (i) {
                o[written++] = ',';
                o[written++] = ' ';
            }
            o[written++] = '"';
            for (int64_t k = a[i]; k < b[i]; k++) {
                uint8_t ch = s[k];
                if (ch < 0x20 || ch >= 0x7f || ch == '"' || ch == '\\') {
                    written = -1;
                    break;
                }
                o[written++] = ch;
            }
            if (written >= 0) o[written++] = '"';
        }
        Py_END_ALLOW_THREADS
    }
    PyBuffer_Release(&src);
    PyBuffer_Release(&starts);
    PyBuffer_Release(&ends);
    PyBuffer_Release(&out);
    if (!ok) {
        PyErr_SetString(PyExc_ValueError, "json_strings: tokens out of range or output too small");
        return NULL;
    }
    return PyLong_FromSsize_t(written);
}

/* gather_pieces(src, starts, lengths, out): out = concatenation of
 * src[starts[i] : starts[i] + lengths[i]] (int64 arrays); used to assemble text lines. */
static PyObject *gather_pieces(PyObject *self, PyObject *args) {
    Py_buffer src, starts, lens, out;
    if (!PyArg_ParseTuple(args, "y*y*y*w*", &src, &starts, &lens, &out)) {
        return NULL;
    }
    Py_ssize_t n = starts.len / 8;
    const int64_t *st = starts.buf, *ln = lens.buf;
    int ok = lens.len == starts.len;
    Py_ssize_t total = 0;
    for (Py_ssize_t i = 0; ok && i < n; i++) {
        ok = ln[i] >= 0 && st[i] >= 0 && st[i] + ln[i] <= src.len;
        total += ln[i];
    }
    ok = ok && total <= out.len;
    if (ok) {
        const uint8_t *s = src.buf;
        uint8_t *o = out.buf;
        Py_BEGIN_ALLOW_THREADS
        for (Py_ssize_t i = 0; i < n; i++) {
            memcpy(o, s + st[i], (size_t)ln[i]);
            o += ln[i];
        }
        Py_END_ALLOW_THREADS
    }
    PyBuffer_Release(&src);
    PyBuffer_Release(&starts);
    PyBuffer_Release(&lens);
    PyBuffer_Release(&out);
    if (!ok) {
        PyErr_SetString(PyExc_ValueError, "gather_pieces: pieces out of range");
        return NULL;
    }
    Py_RETURN_NONE;
}

/* ---- .bim text ----
 * parse_bim(raw, tok_start, tok_end, line_no, pos, flags, id_hash) tokenises a .bim in one
 * pass.  Arrays are preallocated for max_lines lines (int32 n x 6 byte offsets for tokens,
 * so the file must be under 2 GiB).  Per line:
 * pos = parsed decimal position (-1 if not a plain non-negative integer), flags bit 0 = cM
 * token is "0", bit 1 = position token canonical (no leading zero / sign), bit 2 = same
 * chromosome token as the previous variant line, id_hash = FNV-1a of the ID.  Returns the number of variant lines, or -(line number) of the first line
 * without exactly 6 fields. */
static PyObject *parse_bim(PyObject *self, PyObject *args) {
    Py_buffer raw, ts, te, ln, pos, flags, hash;
    if (!PyArg_ParseTuple(args, "y*w*w*w*w*w*w*", &raw, &ts, &te, &ln, &pos, &flags, &hash)) {
        return NULL;
    }
    Py_ssize_t cap = ln.len / 8;
    int ok = ts.len >= cap * 24 && te.len >= cap * 24 && pos.len >= cap * 8 &&
             flags.len >= cap && hash.len >= cap * 8 && raw.len < INT32_MAX;
    Py_ssize_t n = 0;
    if (ok) {
        const uint8_t *b = raw.buf;
        Py_ssize_t len = raw.len;
        int32_t *st = ts.buf, *en = te.buf;
        int64_t *lno = ln.buf, *ps = pos.buf;
        uint8_t *fl = flags.buf;
        uint64_t *hs = hash.buf;
        Py_BEGIN_ALLOW_THREADS
        Py_ssize_t i = 0;
        int64_t line = 0;
        while (i < len && n >= 0) {
            line++;
            int64_t s6[6], e6[6];
            int k = 0;
            while (i < len && b[i] != '\n') {
                uint8_t c = b[i];
                if (c == ' ' || c == '\t' || c == '\r') {
                    i++;
                    continue;
                }
                Py_ssize_t start = i;
                while (i < len && b[i] != '\n' && b[i] != ' ' && b[i] != '\t' && b[i] != '\r') i++;
                if (k < 6) {
                    s6[k] = start;
                    e6[k] = i;
                }
                k++;
            }
            i++; /* skip the newline */
            if (k == 0) continue;
            if (k != 6 || n >= cap) {
                n = -line;
                break;
            }
            for (int q = 0; q < 6; q++) {
                st[6 * n + q] = (int32_t)s6[q];
                en[6 * n + q] = (int32_t)e6[q];
            }
            lno[n] = line;
            int64_t v = 0;
            int valid = e6[3] - s6[3] <= 18;
            for (int64_t q = s6[3]; q < e6[3] && valid; q++) {
                if (b[q] < '0' || b[q] > '9') valid = 0;
                else v = v * 10 + (b[q] - '0');
            }
            ps[n] = valid ? v : -1;
            int same_chrom = n > 0 && e6[0] - s6[0] == en[6 * (n - 1)] - st[6 * (n - 1)] &&
                             memcmp(b + s6[0], b + st[6 * (n - 1)], (size_t)(e6[0] - s6[0])) == 0;
            fl[n] = (uint8_t)(((e6[2] - s6[2] == 1) && b[s6[2]] == '0') |
                              ((valid && ((e6[3] - s6[3] == 1) || b[s6[3]] != '0')) << 1) |
                              (same_chrom << 2));
            uint64_t h = 1469598103934665603ULL;
            for (int64_t q = s6[1]; q < e6[1]; q++) h = (h ^ b[q]) * 1099511628211ULL;
            hs[n] = h;
            n++;
        }
        Py_END_ALLOW_THREADS
    }
    PyBuffer_Release(&raw);
    PyBuffer_Release(&ts);
    PyBuffer_Release(&te);
    PyBuffer_Release(&ln);
    PyBuffer_Release(&pos);
    PyBuffer_Release(&flags);
    PyBuffer_Release(&hash);
    if (!ok) {
        PyErr_SetString(PyExc_ValueError, "parse_bim: output arrays too small");
        return NULL;
    }
    return PyLong_FromSsize_t(n);
}

/* Copy a token of len bytes: two 8-byte moves when it is at most 16 bytes and both buffers
 * have 16 bytes from the copy's start (the bytes past the token are rewritten after). */
static inline void copy_token(uint8_t *dst, const uint8_t *src, Py_ssize_t len, int room) {
    if (len <= 16 && room) {
        memcpy(dst, src, 8);
        memcpy(dst + 8, src + 8, 8);
    } else {
        memcpy(dst, src, (size_t)len);
    }
}

/* bim_lines(raw, tok_start, tok_end, rows, swap, chrom, out): PLINK's .bim lines for `rows`
 * (int64), copying the ID and position tokens, writing the numeric chromosome code, cM "0",
 * and the alleles in swapped order where swap[i].  Returns the bytes written. */
static PyObject *bim_lines(PyObject *self, PyObject *args) {
    Py_buffer raw, ts, te, rows, swap, chrom, out;
    if (!PyArg_ParseTuple(args, "y*y*y*y*y*y*w*", &raw, &ts, &te, &rows, &swap, &chrom, &out)) {
        return NULL;
    }
    Py_ssize_t n = rows.len / 8, n_var = ts.len / 24, w = 0;
    int ok = te.len == ts.len && swap.len >= n && chrom.len >= n_var * 2;
    const int32_t *st = ts.buf, *en = te.buf;
    const int64_t *r = rows.buf;
    for (Py_ssize_t i = 0; ok && i < n; i++) ok = r[i] >= 0 && r[i] < n_var;
    if (ok) {
        const uint8_t *b = raw.buf;
        const uint8_t *sw = swap.buf;
        const int16_t *ch = chrom.buf;
        uint8_t *o = out.buf;
        Py_ssize_t cap = out.len;
        Py_BEGIN_ALLOW_THREADS
        for (Py_ssize_t i = 0; i < n && ok; i++) {
            const int32_t *s = st + 6 * r[i], *e = en + 6 * r[i];
            int a = sw[i] ? 5 : 4, c = sw[i] ? 4 : 5;
            Py_ssize_t need = 3 + 1 + (e[1] - s[1]) + 3 + (e[3] - s[3]) + (e[a] - s[a]) +
                              (e[c] - s[c]) + 4;
            if (w + need > cap) {
                ok = 0;
                break;
            }
            /* 16 bytes past each copy's start, in the input and the output */
            int room = s[a] + 16 <= raw.len && s[c] + 16 <= raw.len && s[1] + 16 <= raw.len &&
                       s[3] + 16 <= raw.len && w + need + 16 <= cap;
            int code = ch[r[i]];
            if (code >= 10) o[w++] = (uint8_t)('0' + code / 10);
            o[w++] = (uint8_t)('0' + code % 10);
            o[w++] = '\t';
            copy_token(o + w, b + s[1], e[1] - s[1], room);
            w += e[1] - s[1];
            o[w++] = '\t';
            o[w++] = '0';
            o[w++] = '\t';
            copy_token(o + w, b + s[3], e[3] - s[3], room);
            w += e[3] - s[3];
            o[w++] = '\t';
            copy_token(o + w, b + s[a], e[a] - s[a], room);
            w += e[a] - s[a];
            o[w++] = '\t';
            copy_token(o + w, b + s[c], e[c] - s[c], room);
            w += e[c] - s[c];
            o[w++] = '\n';
        }
        Py_END_ALLOW_THREADS
    }
    PyBuffer_Release(&raw);
    PyBuffer_Release(&ts);
    PyBuffer_Release(&te);
    PyBuffer_Release(&rows);
    PyBuffer_Release(&swap);
    PyBuffer_Release(&chrom);
    PyBuffer_Release(&out);
    if (!ok) {
        PyErr_SetString(PyExc_ValueError, "bim_lines: rows out of range or output too small");
        return NULL;
    }
    return PyLong_FromSsize_t(w);
}

/* any_equal(values): 1 if two of the uint64 values are equal, else 0.  Two bitsets over 2^24
 * fragments of a mixed value (4 MiB, cache-resident) mark the fragments seen once and twice;
 * only the values of fragments seen twice (a few thousand in a million) are compared, after
 * sorting.  Used on ID hashes: only when some are equal does the caller compare the IDs. */
#define FRAG_BITS 24

static inline uint32_t fragment(uint64_t x) {
    return (uint32_t)((x * 0x9E3779B97F4A7C15ULL) >> (64 - FRAG_BITS));
}

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

static PyObject *any_equal(PyObject *self, PyObject *args) {
    Py_buffer values;
    if (!PyArg_ParseTuple(args, "y*", &values)) {
        return NULL;
    }
    Py_ssize_t n = values.len / 8;
    size_t words = ((size_t)1 << FRAG_BITS) / 64;
    uint64_t *seen = PyMem_RawCalloc(2 * words, sizeof(uint64_t));
    if (seen == NULL) {
        PyBuffer_Release(&values);
        return PyErr_NoMemory();
    }
    uint64_t *twice = seen + words;
    const uint64_t *v = values.buf;
    int found = 0, failed = 0;
    Py_BEGIN_ALLOW_THREADS
    Py_ssize_t n_cand = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        uint32_t f = fragment(v[i]);
        uint64_t bit = 1ULL << (f & 63);
        if (seen[f >> 6] & bit) {
            twice[f >> 6] |= bit;
            n_cand++;
        }
        seen[f >> 6] |= bit;
    }
    if (n_cand) {
        uint64_t *cand = PyMem_RawMalloc(sizeof(uint64_t) * (size_t)(2 * n_cand + 1));
        Py_ssize_t m = 0;
        if (cand == NULL) {
            failed = 1;
        } else {
            for (Py_ssize_t i = 0; i < n; i++) {
                uint32_t f = fragment(v[i]);
                if (twice[f >> 6] & (1ULL << (f & 63))) cand[m++] = v[i];
            }
            qsort(cand, (size_t)m, sizeof(uint64_t), cmp_u64);
            for (Py_ssize_t i = 1; i < m && !found; i++) found = cand[i] == cand[i - 1];
            PyMem_RawFree(cand);
        }
    }
    Py_END_ALLOW_THREADS
    PyMem_RawFree(seen);
    PyBuffer_Release(&values);
    if (failed) return PyErr_NoMemory();
    return PyBool_FromLong(found);
}

static PyMethodDef methods[] = {
    {"parse_bim", parse_bim, METH_VARARGS, "Tokenise a .bim."},
    {"bim_lines", bim_lines, METH_VARARGS, "Write .bim lines."},
    {"any_equal", any_equal, METH_VARARGS, "Whether two uint64 values are equal."},
    {"gather_pieces", gather_pieces, METH_VARARGS, "Concatenate byte ranges."},
    {"count_masks", count_masks, METH_VARARGS, "Masked popcounts of .bed rows."},
    {"group_counts", group_counts, METH_VARARGS, "GroupCounts of .bed rows."},
    {"set_cpu_extensions", set_cpu_extensions, METH_O,
     "Allow the AVX-512 path; returns the old value."},
    {"have_avx512", have_avx512, METH_NOARGS, "Whether the AVX-512 counting path runs here."},
    {"sample_missing", sample_missing, METH_VARARGS, "Per-sample missing-call counts."},
    {"sample_missing_file", sample_missing_file, METH_VARARGS,
     "Per-sample missing-call counts over a file's rows."},
    {"count_byte", count_byte, METH_VARARGS, "Occurrences of one byte value."},
    {"extract_rows", extract_rows, METH_VARARGS, "Subset, reverse and repack .bed rows."},
    {"hwe_pvalues", hwe_pvalues, METH_VARARGS, "Exact HWE p-values."},
    {"hwe_fail_mask", hwe_fail_mask, METH_VARARGS, "Exact HWE threshold test."},
    {"variant_filters", variant_filters, METH_VARARGS, "--geno, --hwe and --maf of a block."},
    {"json_strings", json_strings, METH_VARARGS, "Tokens as JSON array items."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_bed_kernels", NULL, -1, methods};

PyMODINIT_FUNC PyInit__bed_kernels(void) {
    init_reverse_lut();
    return PyModule_Create(&module);
}
