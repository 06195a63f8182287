/* verbs_memhook.h - telling the registration cache that memory went away.
 *
 * A cached registration pins the pages a virtual range had when it was registered.
 * If that range is unmapped (munmap, mremap, mmap MAP_FIXED over it, madvise
 * DONTNEED/FREE/REMOVE, or free() handing the pages back to the kernel) and the
 * addresses are later reused, the cached MR still points at the old pages: the HCA
 * would read and write memory the application no longer sees.
 *
 * libcrux therefore defines munmap, mremap, mmap, madvise, free, realloc and
 * reallocarray itself (symbol interposition, as UCX's ucm does): each notes the
 * range it releases when it overlaps a watched registration, then calls the next
 * definition (libc's). The malloc family is needed because glibc's malloc unmaps
 * and trims through internal calls that no interposed munmap sees. Not seen:
 * shmdt, and raw syscall(SYS_munmap, ...). The cache drains the notes at its
 * next lookup. The hooks allocate nothing and take no lock: any thread, any time.
 *
 * Interposition needs libcrux ahead of libc in the symbol lookup order (linked into
 * the program, or LD_PRELOAD). mh_hooks_active() says whether that is so; when it
 * is not (libcrux dlopen'ed, e.g. from Python), the cache must not keep anything.
 */
#ifndef CRUX_VERBS_MEMHOOK_H
#define CRUX_VERBS_MEMHOOK_H

#include <stddef.h>
#include <stdint.h>

#define MH_NWATCH 256 /* registrations watched one by one; beyond, the whole span */

/* Are this library's munmap/free/... the ones the process calls? */
int mh_hooks_active(void);
/* Watch [start, end): returns a handle for mh_unwatch (never fails). */
int mh_watch(uintptr_t start, uintptr_t end);
void mh_unwatch(int handle);
/* Position in the stream of released ranges (a reader starts here). */
uint64_t mh_cursor_now(void);
/* Call fn for every range released since *cursor and advance it. Returns 1 when
 * ranges were lost (too many at once): the caller must assume everything went. */
int mh_drain(uint64_t *cursor, void (*fn)(void *arg, uintptr_t start, uintptr_t end), void *arg);

#endif
