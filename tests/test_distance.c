/* test_distance.c -- the SIMD distance kernels against the scalar reference,
 * the dispatcher and its KILN_SIMD cap, and kiln_normalize.
 *
 * Tolerance: a float sum of dim terms is off from the exact sum by at most
 * about (dim + 2) * FLT_EPSILON * (sum of |terms|) (the +2 covers rounding
 * the difference and the product of each term). Two float results, each
 * within that of the truth, are within twice it of each other; that is the
 * bound SIMD and scalar are held to, with the magnitude taken in double. */
#include <float.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "check.h"
#include "../common/distance_internal.h"
#include "kiln.h"
#include "../common/rng_internal.h"

#define MAX_DIM       1000
#define PAIRS_PER_DIM 8

typedef float (*dist_fn)(const float *, const float *, size_t);

typedef struct variant {
    const char *name;
    dist_fn l2, ip;
} variant;

static void fill(kiln_rng *rng, float *v, size_t dim, double scale) {
    for (size_t i = 0; i < dim; i++)
        v[i] = (float)((2.0 * kiln_rng_uniform(rng) - 1.0) * scale);
}

/* Exact-ish value in double and the magnitude the rounding bound scales with. */
static double l2_ref(const float *a, const float *b, size_t dim, double *mag) {
    double s = 0.0;
    for (size_t i = 0; i < dim; i++) {
        const double d = (double)a[i] - (double)b[i];
        s += d * d;
    }
    *mag = s;
    return s;
}

static double ip_ref(const float *a, const float *b, size_t dim, double *mag) {
    double s = 0.0, m = 1.0;
    for (size_t i = 0; i < dim; i++) {
        s += (double)a[i] * (double)b[i];
        m += fabs((double)a[i] * (double)b[i]);
    }
    *mag = m;
    return 1.0 - s;
}

static double bound(size_t dim, double mag) { return (double)(dim + 2) * FLT_EPSILON * mag; }

/* ==== Kernels vs the scalar reference ==== */

static void check_variant(const variant *v, const float *a, const float *b, size_t dim) {
    double mag;
    const double l2 = l2_ref(a, b, dim, &mag);
    const float l2_scalar = kiln_l2sq_scalar(a, b, dim), l2_simd = v->l2(a, b, dim);
    CHECK_MSG(fabs((double)l2_scalar - l2) <= bound(dim, mag), "scalar l2 dim %zu: %.9g vs %.9g",
              dim, (double)l2_scalar, l2);
    CHECK_MSG(fabs((double)l2_simd - (double)l2_scalar) <= 2 * bound(dim, mag),
              "%s l2 dim %zu: %.9g vs scalar %.9g", v->name, dim, (double)l2_simd,
              (double)l2_scalar);

    const double ip = ip_ref(a, b, dim, &mag);
    const float ip_scalar = kiln_ipdist_scalar(a, b, dim), ip_simd = v->ip(a, b, dim);
    CHECK_MSG(fabs((double)ip_scalar - ip) <= bound(dim, mag), "scalar ip dim %zu: %.9g vs %.9g",
              dim, (double)ip_scalar, ip);
    CHECK_MSG(fabs((double)ip_simd - (double)ip_scalar) <= 2 * bound(dim, mag),
              "%s ip dim %zu: %.9g vs scalar %.9g", v->name, dim, (double)ip_simd,
              (double)ip_scalar);
}

static void test_random(const variant *v, size_t dim) {
    /* One spare float in front so the kernels also see vectors that are not
     * 16- or 32-byte aligned. */
    float *a = malloc((MAX_DIM + 1) * sizeof(float)), *b = malloc((MAX_DIM + 1) * sizeof(float));
    REQUIRE(a && b);
    kiln_rng rng;
    kiln_rng_seed(&rng, 0x5eed0000u + dim);
    static const double scales[] = {1.0, 1e-3, 255.0};
    for (int p = 0; p < PAIRS_PER_DIM; p++) {
        const double scale = scales[p % 3];
        const size_t off = (size_t)(p & 1);
        fill(&rng, a + off, dim, scale);
        fill(&rng, b + off, dim, scale);
        check_variant(v, a + off, b + off, dim);
    }
    free(a);
    free(b);
}

/* Small integer values keep every partial sum exact in float, so any
 * summation order gives the same bits: SIMD must equal scalar exactly. */
static void test_integer_exact(const variant *v, size_t dim) {
    float a[MAX_DIM], b[MAX_DIM];
    kiln_rng rng;
    kiln_rng_seed(&rng, 77 + dim);
    /* Values below sqrt(2^24 / dim) keep the L2 sum under 2^24. */
    uint64_t range = (uint64_t)sqrt((double)(1u << 24) / (double)dim);
    range = range < 256 ? range : 256;
    for (size_t i = 0; i < dim; i++) {
        a[i] = (float)kiln_rng_below(&rng, range);
        b[i] = (float)kiln_rng_below(&rng, range);
    }
    CHECK_MSG(v->l2(a, b, dim) == kiln_l2sq_scalar(a, b, dim), "%s l2 dim %zu not exact", v->name,
              dim);
    for (size_t i = 0; i < dim; i++) {
        a[i] = (float)((int)kiln_rng_below(&rng, 16) - 8);
        b[i] = (float)((int)kiln_rng_below(&rng, 16) - 8);
    }
    CHECK_MSG(v->ip(a, b, dim) == kiln_ipdist_scalar(a, b, dim), "%s ip dim %zu not exact", v->name,
              dim);
}

/* Vectors that end exactly at an unreadable page: a tail read past the last
 * element (instead of a masked one) faults here. */
static void test_page_end(const variant *v) {
    const long page = sysconf(_SC_PAGESIZE);
    REQUIRE(page > 0);
    uint8_t *map =
        mmap(NULL, 2 * (size_t)page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    REQUIRE(map != MAP_FAILED);
    REQUIRE(mprotect(map + page, (size_t)page, PROT_NONE) == 0);
    float *const end = (float *)(map + page);
    static const size_t dims[] = {1, 3, 7, 9, 15, 17, 31, 33, 63, 65, 129};
    for (size_t t = 0; t < sizeof dims / sizeof dims[0]; t++) {
        const size_t dim = dims[t];
        float *const a = end - dim, *const b = end - 2 * dim;
        for (size_t i = 0; i < dim; i++) {
            a[i] = (float)(i % 5);
            b[i] = (float)(i % 3);
        }
        /* b's tail runs into a, so check both argument orders. */
        CHECK(v->l2(a, b, dim) == kiln_l2sq_scalar(a, b, dim));
        CHECK(v->l2(b, a, dim) == kiln_l2sq_scalar(b, a, dim));
        CHECK(v->ip(a, b, dim) == kiln_ipdist_scalar(a, b, dim));
        CHECK(v->ip(b, a, dim) == kiln_ipdist_scalar(b, a, dim));
    }
    munmap(map, 2 * (size_t)page);
}

static void test_variant(const variant *v) {
    for (size_t dim = 1; dim <= 70; dim++) {
        test_random(v, dim);
        test_integer_exact(v, dim);
    }
    static const size_t big[] = {127, 128, 129, 784, 1000};
    for (size_t t = 0; t < sizeof big / sizeof big[0]; t++) {
        test_random(v, big[t]);
        test_integer_exact(v, big[t]);
    }
    test_page_end(v);
}

/* ==== Dispatch ==== */

/* The dispatch is fixed at the first call in a process, so the cap is
 * tested by running this program again with KILN_SIMD set. */
static void child_simd(const char *self, const char *cap, char *out, size_t len) {
    char cmd[4200];
    snprintf(cmd, sizeof cmd, "KILN_SIMD=%s %s '%s' --print-simd", cap, check_emulator(), self);
    out[0] = '\0';
    FILE *p = popen(cmd, "r");
    REQUIRE(p);
    if (!fgets(out, (int)len, p))
        out[0] = '\0';
    pclose(p);
    out[strcspn(out, "\n")] = '\0';
}

static void test_dispatch(void) {
    const char *name = kiln_simd_name();
    CHECK(strcmp(name, "scalar") == 0 || strcmp(name, "avx2") == 0 || strcmp(name, "avx512") == 0);
    const char *best = kiln_cpu_has_avx512() ? "avx512" : (kiln_cpu_has_avx2() ? "avx2" : "scalar");
    const char *env = getenv("KILN_SIMD");
    if (!env)
        CHECK_MSG(strcmp(name, best) == 0, "dispatch %s, CPU best %s", name, best);

    dist_fn want_l2 = kiln_l2sq_scalar, want_ip = kiln_ipdist_scalar;
#if KILN_SIMD_X86
    if (strcmp(name, "avx512") == 0) {
        want_l2 = kiln_l2sq_avx512;
        want_ip = kiln_ipdist_avx512;
    } else if (strcmp(name, "avx2") == 0) {
        want_l2 = kiln_l2sq_avx2;
        want_ip = kiln_ipdist_avx2;
    }
#endif
    CHECK(kiln_distance_fn(KILN_METRIC_L2) == want_l2);
    CHECK(kiln_distance_fn(KILN_METRIC_IP) == want_ip);
    CHECK(kiln_distance_fn(KILN_METRIC_COS) == want_ip);

    char self[4096];
    const ssize_t len = readlink("/proc/self/exe", self, sizeof self - 1);
    if (len <= 0) {
        fprintf(stderr, "note: /proc/self/exe unreadable, KILN_SIMD cap not tested\n");
        return;
    }
    self[len] = '\0';
    char got[64];
    child_simd(self, "scalar", got, sizeof got);
    CHECK_MSG(strcmp(got, "scalar") == 0, "KILN_SIMD=scalar gave %s", got);
    child_simd(self, "avx2", got, sizeof got);
    const char *want = kiln_cpu_has_avx2() ? "avx2" : "scalar";
    CHECK_MSG(strcmp(got, want) == 0, "KILN_SIMD=avx2 gave %s, want %s", got, want);
    child_simd(self, "avx512", got, sizeof got);
    CHECK_MSG(strcmp(got, best) == 0, "KILN_SIMD=avx512 gave %s, want %s", got, best);
    child_simd(self, "bogus", got, sizeof got);
    CHECK_MSG(strcmp(got, best) == 0, "KILN_SIMD=bogus gave %s, want %s", got, best);
}

/* ==== Normalisation ==== */

static void test_normalize(void) {
    kiln_rng rng;
    kiln_rng_seed(&rng, 4242);
    float v[MAX_DIM];
    static const size_t dims[] = {1, 2, 3, 17, 128, 784, 1000};
    static const double scales[] = {1.0, 1e-20, 1e20};
    for (size_t t = 0; t < sizeof dims / sizeof dims[0]; t++) {
        for (size_t s = 0; s < sizeof scales / sizeof scales[0]; s++) {
            const size_t dim = dims[t];
            fill(&rng, v, dim, scales[s]);
            kiln_normalize(v, dim);
            double sq = 0.0;
            for (size_t i = 0; i < dim; i++)
                sq += (double)v[i] * v[i];
            CHECK_MSG(fabs(sq - 1.0) <= 4 * bound(dim, 1.0), "dim %zu scale %g: |v|^2 = %.9g", dim,
                      scales[s], sq);
        }
    }
    memset(v, 0, sizeof v);
    kiln_normalize(v, 128);
    int zero = 1;
    for (size_t i = 0; i < 128; i++)
        zero &= v[i] == 0.0f;
    CHECK(zero);
    float one[1] = {-3.0f};
    kiln_normalize(one, 1);
    CHECK(one[0] == -1.0f);
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "--print-simd") == 0) {
        printf("%s\n", kiln_simd_name());
        return 0;
    }
    const variant scalar = {"scalar", kiln_l2sq_scalar, kiln_ipdist_scalar};
    test_variant(&scalar);
#if KILN_SIMD_X86
    const variant avx2 = {"avx2", kiln_l2sq_avx2, kiln_ipdist_avx2};
    const variant avx512 = {"avx512", kiln_l2sq_avx512, kiln_ipdist_avx512};
    if (kiln_cpu_has_avx2())
        test_variant(&avx2);
    else
        fprintf(stderr, "note: CPU lacks AVX2+FMA, AVX2 cases skipped\n");
    if (kiln_cpu_has_avx512())
        test_variant(&avx512);
    else
        fprintf(stderr, "note: CPU lacks AVX-512F, AVX-512 cases skipped\n");
#else
    fprintf(stderr, "note: not x86, only the scalar reference is built\n");
#endif
    test_dispatch();
    test_normalize();
    return check_report("test_distance");
}
