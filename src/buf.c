/* buf.c — per-thread pool of fixed-size buffers. */
#include "buf.h"
#include "mem.h"
#include <stdlib.h>
#include <string.h>

struct buf *buf_get(struct buf_pool *p)
{
    struct buf *b = p->free;

    if (b) {
        p->free = b->next_free;
        p->nfree--;
    } else {
        b = xmalloc(sizeof *b);
    }
    b->start = b->end = 0;
    b->next_free = NULL;
    return b;
}

void buf_put(struct buf_pool *p, struct buf *b)
{
    if (!b)
        return;
    if (p->nfree >= p->max_free) {
        free(b);
        return;
    }
    b->next_free = p->free;
    p->free = b;
    p->nfree++;
}

void buf_pool_drain(struct buf_pool *p)
{
    while (p->free) {
        struct buf *b = p->free;
        p->free = b->next_free;
        free(b);
    }
    p->nfree = 0;
}

void buf_compact_to(struct buf *b, uint32_t at)
{
    uint32_t n = buf_len(b);

    if (b->start == at)
        return;
    memmove(b->data + at, b->data + b->start, n);
    b->start = at;
    b->end = at + n;
}
