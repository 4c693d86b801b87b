/* sort_internal.h -- in-place sorts for the short arrays of graph building:
 * candidate lists of a few dozen to a few hundred entries, sorted once per
 * node per step.
 *
 * Design decisions:
 *  1. qsort's comparator call per comparison cost 5.6% of a 1M x 128 device
 *     build (merge's id dedupe and (dist, id) sorts); these are inlined:
 *     insertion sort up to SORT_SMALL entries, else median-of-three
 *     quicksort on the larger side's loop and recursion on the smaller, so
 *     the stack stays O(log n).
 *  2. One macro body, instantiated per element type with its "less": u32 ids
 *     and kiln_cand by (dist, id). Elements comparing neither way (a NaN
 *     distance) only make the order among them unspecified; the scans stop
 *     at the pivot itself, so they never run past the range. graph/ never
 *     sorts a NaN: its distances come from kiln_node_dist, NaN as +inf.
 */
#ifndef KILN_SORT_INTERNAL_H
#define KILN_SORT_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#define SORT_SMALL 24

#define KILN_DEFINE_SORT(NAME, T, LESS)                                                            \
    static inline void NAME##_insertion(T *v, ptrdiff_t n) {                                       \
        for (ptrdiff_t i = 1; i < n; i++) {                                                        \
            const T x = v[i];                                                                      \
            ptrdiff_t j = i;                                                                       \
            while (j > 0 && LESS(x, v[j - 1])) {                                                   \
                v[j] = v[j - 1];                                                                   \
                j--;                                                                               \
            }                                                                                      \
            v[j] = x;                                                                              \
        }                                                                                          \
    }                                                                                              \
    static inline void NAME(T *v, ptrdiff_t n) {                                                   \
        while (n > SORT_SMALL) {                                                                   \
            T a = v[0], b = v[n / 2], c = v[n - 1], t;                                             \
            if (LESS(b, a)) {                                                                      \
                t = a;                                                                             \
                a = b;                                                                             \
                b = t;                                                                             \
            }                                                                                      \
            if (LESS(c, b)) {                                                                      \
                b = c;                                                                             \
                if (LESS(b, a))                                                                    \
                    b = a;                                                                         \
            }                                                                                      \
            const T pivot = b;                                                                     \
            ptrdiff_t i = 0, j = n - 1;                                                            \
            for (;;) {                                                                             \
                while (LESS(v[i], pivot))                                                          \
                    i++;                                                                           \
                while (LESS(pivot, v[j]))                                                          \
                    j--;                                                                           \
                if (i >= j)                                                                        \
                    break;                                                                         \
                t = v[i];                                                                          \
                v[i++] = v[j];                                                                     \
                v[j--] = t;                                                                        \
            }                                                                                      \
            /* [0, j] <= pivot <= [j + 1, n) */                                                    \
            const ptrdiff_t left = j + 1, right = n - j - 1;                                       \
            if (left < right) {                                                                    \
                NAME(v, left);                                                                     \
                v += left;                                                                         \
                n = right;                                                                         \
            } else {                                                                               \
                NAME(v + left, right);                                                             \
                n = left;                                                                          \
            }                                                                                      \
        }                                                                                          \
        NAME##_insertion(v, n);                                                                    \
    }

#endif /* KILN_SORT_INTERNAL_H */
