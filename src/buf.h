/* buf.h — fixed-size byte buffers from a per-thread free list, so the request
 * path never calls malloc after warm-up and idle connections hold none.
 * A buffer has one owner at a time; data lives in data[start..end). */
#ifndef CORE_BUF_H
#define CORE_BUF_H
#include <stddef.h>
#include <stdint.h>

#define BUF_SIZE 16384u

struct buf {
    uint32_t start, end;    /* readable bytes are data[start..end) */
    struct buf *next_free;  /* free-list link while pooled */
    char data[BUF_SIZE];
};

/* Pool of one thread: never shared. */
struct buf_pool {
    struct buf *free;
    unsigned nfree;
    unsigned max_free;      /* above this, buffers go back to malloc */
};

struct buf *buf_get(struct buf_pool *p);   /* empty buffer */
void buf_put(struct buf_pool *p, struct buf *b);
void buf_pool_drain(struct buf_pool *p);

static inline uint32_t buf_len(const struct buf *b) { return b->end - b->start; }
static inline char *buf_head(struct buf *b) { return b->data + b->start; }
static inline char *buf_tail(struct buf *b) { return b->data + b->end; }
static inline uint32_t buf_room(const struct buf *b) { return BUF_SIZE - b->end; }
static inline void buf_consume(struct buf *b, uint32_t n)
{
    b->start += n;
    if (b->start == b->end)
        b->start = b->end = 0;
}
/* Moves the readable bytes to offset at (so that at..end has them). */
void buf_compact_to(struct buf *b, uint32_t at);
static inline void buf_compact(struct buf *b) { buf_compact_to(b, 0); }

#endif
