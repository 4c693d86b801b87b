/* downstream.c -- a program outside the tree, built against the installed
 * kiln: builds a small index by insertion, searches it, saves and reloads
 * it, and checks that (nearly) every vector finds itself. Exit 0 on
 * success. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <kiln.h>

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: downstream INDEX_PATH\n");
        return 2;
    }
    enum { N = 500, DIM = 8 };
    static float x[N * DIM];
    unsigned s = 12345;
    for (size_t i = 0; i < N * DIM; i++) {
        s = s * 1103515245u + 12345u;
        x[i] = (float)((s >> 8) & 0xffff) / 65536.0f;
    }
    kiln_ctx *ctx = NULL;
    kiln_index *ix = NULL, *back = NULL;
    if (kiln_ctx_new(&ctx) != KILN_OK)
        return 1;
    kiln_build_params p;
    kiln_build_params_init(&p);
    p.method = KILN_METHOD_INSERT;
    p.threads = 1; /* one thread and a fixed seed: the same graph every run */
    kiln_status st = kiln_index_build(ctx, x, N, DIM, &p, &ix);
    if (st == KILN_OK)
        st = kiln_index_save(ix, argv[1]);
    if (st == KILN_OK)
        st = kiln_index_load(ctx, argv[1], &back);
    int found = 0;
    if (st == KILN_OK) {
        kiln_search_params sp;
        kiln_search_params_init(&sp);
        sp.k = 1;
        static int64_t labels[N];
        static float dists[N];
        st = kiln_index_search(back, x, N, &sp, labels, dists);
        for (int i = 0; st == KILN_OK && i < N; i++)
            found += labels[i] == i;
    }
    if (st != KILN_OK)
        fprintf(stderr, "downstream: %s: %s\n", kiln_status_str(st), kiln_errmsg(ctx));
    else
        printf("downstream: kiln %s, %d of %d vectors find themselves\n", kiln_version_string(),
               found, N);
    kiln_index_free(back);
    kiln_index_free(ix);
    kiln_ctx_free(ctx);
    return st == KILN_OK && found >= N * 99 / 100 ? 0 : 1;
}
