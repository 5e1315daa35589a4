/* mem.h — the one allocation wrapper. Policy: running out of memory is fatal
 * (a message and abort), as in Redis: a proxy that cannot allocate a few KiB
 * cannot serve anyone, and checking every allocation would hide real errors. */
#ifndef CORE_MEM_H
#define CORE_MEM_H
#include <stddef.h>

void *xmalloc(size_t n);
void *xcalloc(size_t count, size_t n);
void *xrealloc(void *p, size_t n);
char *xstrdup(const char *s);
char *xstrndup(const char *s, size_t n);
/* Overwrites n bytes at p in a way the compiler cannot drop (key material). */
void mem_wipe(void *p, size_t n);

#endif
