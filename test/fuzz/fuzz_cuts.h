/*
 * fuzz_cuts.h - where a split-feeding harness cuts its input (shared by
 * fuzz_wsframe.c and fuzz_mqttpkt.c; a header: each harness is one
 * translation unit).
 *
 * bytewise: a cut after every byte (*cuts is malloc'd, free it when it
 * is not cut); else three cuts at sel[i] * n / 255, in order, in cut[].
 */
#ifndef FUZZ_CUTS_H
#define FUZZ_CUTS_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

static inline void fuzz_cuts(const uint8_t sel[3], size_t n, int bytewise,
                             size_t cut[3], size_t **cuts, size_t *ncut)
{
    size_t i, j, t;

    if (bytewise) {
        *ncut = n;
        *cuts = malloc((n ? n : 1) * sizeof(size_t));
        if (*cuts == NULL)
            abort();
        for (i = 0; i < n; i++)
            (*cuts)[i] = i + 1;
        return;
    }
    *ncut = 3;
    *cuts = cut;
    for (i = 0; i < 3; i++) {
        cut[i] = (size_t)sel[i] * n / 255;
        for (j = i; j > 0 && cut[j - 1] > cut[j]; j--)
            t = cut[j], cut[j] = cut[j - 1], cut[j - 1] = t;
    }
}

#endif
