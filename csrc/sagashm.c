/* Shared-memory id counter and terminal-claim table (see sagashm.h).
 *
 * All cross-process words are accessed with C11 atomics; nothing here takes a
 * lock or aborts the process.  The creator writes the header's magic last
 * (release), so an attacher that sees the magic (acquire) sees a whole header.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "sagashm.h"

_Static_assert(ATOMIC_LLONG_LOCK_FREE == 2, "64-bit atomics must be lock-free");
_Static_assert(sizeof(unsigned long long) == 8, "64-bit words expected");

#define MAGIC 0x314d48534147415bULL /* "[AGASHM1" little-endian: saga shm v1 */
#define LAYOUT_VERSION 2u /* 2: the id fence (id_limit) */
#define HEADER_SIZE 256u
#define MAX_ID ((1ULL << 62) - 1)
#define MAX_CAPACITY (1ULL << 30)
#define CACHE_LINE 64

typedef struct {
    _Atomic uint64_t magic;             /* written last by the creator */
    uint32_t layout_version;
    uint32_t header_size;
    uint64_t capacity;                  /* power of two */
    uint64_t total_size;                /* header + capacity * 8 */
    int64_t creator_pid;
    uint64_t creator_token;             /* e.g. process start time: pid reuse guard */
    char pad0[CACHE_LINE - 48];
    _Atomic uint64_t next_id;           /* own cache line: hammered by fetch-add */
    char pad1[CACHE_LINE - 8];
    _Atomic int64_t in_flight;          /* own cache line */
    char pad2[CACHE_LINE - 8];
    _Atomic uint64_t id_limit;          /* ids >= this are not handed out (read-mostly) */
    char reserved[HEADER_SIZE - 3 * CACHE_LINE - 8];
} header_t;

_Static_assert(sizeof(header_t) == HEADER_SIZE, "header must be 256 bytes");
_Static_assert(offsetof(header_t, next_id) == CACHE_LINE, "counter on its own line");

struct ssm_segment {
    header_t *hdr;
    _Atomic uint64_t *slots;
    uint64_t mask;
    size_t size;
};

uint64_t ssm_magic(void) { return MAGIC; }
uint32_t ssm_layout_version(void) { return LAYOUT_VERSION; }
uint64_t ssm_max_id(void) { return MAX_ID; }
uint64_t ssm_max_capacity(void) { return MAX_CAPACITY; }
uint32_t ssm_header_size(void) { return HEADER_SIZE; }

static int map_segment(int fd, size_t size, ssm_segment **out) {
    void *base = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (base == MAP_FAILED) return SSM_ESYS;
    ssm_segment *seg = malloc(sizeof(*seg));
    if (seg == NULL) {
        munmap(base, size);
        errno = ENOMEM;
        return SSM_ESYS;
    }
    seg->hdr = base;
    seg->slots = (_Atomic uint64_t *)((char *)base + HEADER_SIZE);
    seg->size = size;
    seg->mask = 0;
    *out = seg;
    return SSM_OK;
}

int ssm_create(const char *name, uint64_t capacity, uint64_t first_id, uint64_t id_limit,
               int64_t creator_pid, uint64_t creator_token, ssm_segment **out) {
    if (capacity == 0 || capacity > MAX_CAPACITY || (capacity & (capacity - 1)) != 0)
        return SSM_ECAPACITY;
    if (first_id == 0 || first_id > MAX_ID) return SSM_ERANGE;
    int fd = shm_open(name, O_CREAT | O_EXCL | O_RDWR, 0600);
    if (fd < 0) return errno == EEXIST ? SSM_EEXIST : SSM_ESYS;
    size_t size = HEADER_SIZE + (size_t)capacity * sizeof(uint64_t);
    if (ftruncate(fd, (off_t)size) != 0) {
        int saved = errno;
        close(fd);
        shm_unlink(name);
        errno = saved;
        return SSM_ESYS;
    }
    ssm_segment *seg;
    int rc = map_segment(fd, size, &seg);
    close(fd);
    if (rc != SSM_OK) {
        int saved = errno;
        shm_unlink(name);
        errno = saved;
        return rc;
    }
    header_t *h = seg->hdr; /* ftruncate zero-fills: every slot starts free */
    h->layout_version = LAYOUT_VERSION;
    h->header_size = HEADER_SIZE;
    h->capacity = capacity;
    h->total_size = size;
    h->creator_pid = creator_pid;
    h->creator_token = creator_token;
    atomic_store_explicit(&h->next_id, first_id, memory_order_relaxed);
    atomic_store_explicit(&h->in_flight, 0, memory_order_relaxed);
    atomic_store_explicit(&h->id_limit, id_limit, memory_order_relaxed);
    atomic_store_explicit(&h->magic, MAGIC, memory_order_release);
    seg->mask = capacity - 1;
    *out = seg;
    return SSM_OK;
}

int ssm_attach(const char *name, ssm_segment **out) {
    int fd = shm_open(name, O_RDWR, 0);
    if (fd < 0) return errno == ENOENT ? SSM_ENOENT : SSM_ESYS;
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int saved = errno;
        close(fd);
        errno = saved;
        return SSM_ESYS;
    }
    if ((uint64_t)st.st_size < HEADER_SIZE) {
        close(fd);
        return st.st_size == 0 ? SSM_EUNINIT : SSM_ESIZE;
    }
    ssm_segment *seg;
    int rc = map_segment(fd, (size_t)st.st_size, &seg);
    close(fd);
    if (rc != SSM_OK) return rc;
    header_t *h = seg->hdr;
    uint64_t magic = atomic_load_explicit(&h->magic, memory_order_acquire);
    if (magic != MAGIC) rc = magic == 0 ? SSM_EUNINIT : SSM_EMAGIC;
    else if (h->layout_version != LAYOUT_VERSION || h->header_size != HEADER_SIZE)
        rc = SSM_EVERSION;
    else if (h->capacity == 0 || (h->capacity & (h->capacity - 1)) != 0 ||
             h->capacity > MAX_CAPACITY ||
             h->total_size != HEADER_SIZE + h->capacity * sizeof(uint64_t) ||
             h->total_size != (uint64_t)st.st_size)
        rc = SSM_ESIZE;
    if (rc != SSM_OK) {
        ssm_detach(seg);
        return rc;
    }
    seg->mask = h->capacity - 1;
    *out = seg;
    return SSM_OK;
}

void ssm_detach(ssm_segment *seg) {
    if (seg == NULL) return;
    munmap(seg->hdr, seg->size);
    free(seg);
}

int ssm_unlink(const char *name) {
    if (shm_unlink(name) == 0) return SSM_OK;
    return errno == ENOENT ? SSM_ENOENT : SSM_ESYS;
}

uint64_t ssm_capacity(ssm_segment *seg) { return seg->hdr->capacity; }
int64_t ssm_creator_pid(ssm_segment *seg) { return seg->hdr->creator_pid; }
uint64_t ssm_creator_token(ssm_segment *seg) { return seg->hdr->creator_token; }

uint64_t ssm_peek_next_id(ssm_segment *seg) {
    return atomic_load_explicit(&seg->hdr->next_id, memory_order_acquire);
}

uint64_t ssm_id_limit(ssm_segment *seg) {
    return atomic_load_explicit(&seg->hdr->id_limit, memory_order_acquire);
}

uint64_t ssm_raise_id_limit(ssm_segment *seg, uint64_t limit) {
    _Atomic uint64_t *lim = &seg->hdr->id_limit;
    uint64_t cur = atomic_load_explicit(lim, memory_order_relaxed);
    while (cur < limit && !atomic_compare_exchange_weak_explicit(lim, &cur, limit,
                                                                 memory_order_release,
                                                                 memory_order_relaxed)) {
    }
    return cur < limit ? limit : cur;
}

/* An id at or past the fence is burned (never handed out): ids need not be
 * dense, and the fence only ever rises. */
static inline int fenced(ssm_segment *seg, uint64_t id) {
    return id >= atomic_load_explicit(&seg->hdr->id_limit, memory_order_acquire);
}

uint64_t ssm_next_id(ssm_segment *seg) {
    uint64_t id = atomic_fetch_add_explicit(&seg->hdr->next_id, 1, memory_order_relaxed);
    if (id > MAX_ID) return 0;
    return fenced(seg, id) ? (uint64_t)(int64_t)SSM_EFENCE : id;
}

uint64_t ssm_reserve(ssm_segment *seg, uint64_t n) {
    if (n == 0 || n > MAX_ID) return 0;
    /* CAS loop rather than fetch-add so that a refused reservation does not
     * move the counter: a huge n must not poison the counter for everyone. */
    _Atomic uint64_t *ctr = &seg->hdr->next_id;
    uint64_t cur = atomic_load_explicit(ctr, memory_order_relaxed);
    do {
        if (cur > MAX_ID || n > MAX_ID - cur + 1) return 0;
        if (fenced(seg, cur + n - 1)) return (uint64_t)(int64_t)SSM_EFENCE;
    } while (!atomic_compare_exchange_weak_explicit(ctr, &cur, cur + n,
                                                    memory_order_relaxed,
                                                    memory_order_relaxed));
    return cur;
}

static inline int allocated(ssm_segment *seg, uint64_t id) {
    return id != 0 && id < atomic_load_explicit(&seg->hdr->next_id, memory_order_relaxed)
           && id <= MAX_ID;
}

/* Take the slot of `id` if it is free or holds a claimed (finished) saga;
 * `ordered`: only an older id's (ours: a slot's ids only grow). */
static inline int take_slot(ssm_segment *seg, uint64_t id, int ordered) {
    _Atomic uint64_t *slot = &seg->slots[id & seg->mask];
    uint64_t cur = atomic_load_explicit(slot, memory_order_acquire);
    for (;;) {
        if (ordered && cur != 0 && (cur >> 1) >= id) /* same or newer id holds it: stale */
            return (cur >> 1) == id && (cur & 1) == 0 ? SSM_EFULL : SSM_ERANGE;
        if (cur != 0 && (cur & 1) == 0) return SSM_EFULL; /* live: never overwrite */
        if (atomic_compare_exchange_weak_explicit(slot, &cur, id << 1,
                                                  memory_order_acq_rel,
                                                  memory_order_acquire)) {
            atomic_fetch_add_explicit(&seg->hdr->in_flight, 1, memory_order_relaxed);
            return SSM_OK;
        }
    }
}

int ssm_register(ssm_segment *seg, uint64_t id) {
    if (!allocated(seg, id)) return SSM_ERANGE;
    return take_slot(seg, id, 1);
}

int ssm_adopt(ssm_segment *seg, uint64_t id) {
    if (id == 0 || id > MAX_ID) return SSM_ERANGE;
    return take_slot(seg, id, 0);
}

uint64_t ssm_acquire(ssm_segment *seg, uint64_t max_tries) {
    if (max_tries == 0) max_tries = 1;
    for (uint64_t i = 0; i < max_tries; i++) {
        if ((uint64_t)atomic_load_explicit(&seg->hdr->in_flight, memory_order_relaxed)
            >= seg->hdr->capacity)
            return (uint64_t)(int64_t)SSM_EFULL;
        uint64_t id = atomic_fetch_add_explicit(&seg->hdr->next_id, 1, memory_order_relaxed);
        if (id > MAX_ID) return (uint64_t)(int64_t)SSM_EOVERFLOW;
        if (fenced(seg, id)) return (uint64_t)(int64_t)SSM_EFENCE;
        int rc = take_slot(seg, id, 1);
        if (rc == SSM_OK) return id;
        /* slot held by a long-lived saga: skip this id, ids need not be dense */
    }
    return (uint64_t)(int64_t)SSM_EFULL;
}

int ssm_claim(ssm_segment *seg, uint64_t id) {
    if (id == 0 || id > MAX_ID) return SSM_ERANGE;
    _Atomic uint64_t *slot = &seg->slots[id & seg->mask];
    uint64_t expected = id << 1;
    if (atomic_compare_exchange_strong_explicit(slot, &expected, expected | 1,
                                                memory_order_acq_rel,
                                                memory_order_acquire)) {
        atomic_fetch_sub_explicit(&seg->hdr->in_flight, 1, memory_order_relaxed);
        return 1;
    }
    return 0; /* claimed already, slot reused, or never registered: the loser */
}

int ssm_reopen(ssm_segment *seg, uint64_t id) {
    if (id == 0 || id > MAX_ID) return SSM_ERANGE;
    _Atomic uint64_t *slot = &seg->slots[id & seg->mask];
    uint64_t expected = (id << 1) | 1;
    if (atomic_compare_exchange_strong_explicit(slot, &expected, id << 1,
                                                memory_order_acq_rel,
                                                memory_order_acquire)) {
        atomic_fetch_add_explicit(&seg->hdr->in_flight, 1, memory_order_relaxed);
        return 1;
    }
    return 0;
}

int ssm_state(ssm_segment *seg, uint64_t id) {
    if (id == 0 || id > MAX_ID) return SSM_STATE_UNKNOWN;
    uint64_t cur = atomic_load_explicit(&seg->slots[id & seg->mask], memory_order_acquire);
    if ((cur >> 1) != id) return SSM_STATE_UNKNOWN;
    return (cur & 1) ? SSM_STATE_CLAIMED : SSM_STATE_LIVE;
}

int64_t ssm_in_flight(ssm_segment *seg) {
    return atomic_load_explicit(&seg->hdr->in_flight, memory_order_relaxed);
}

static _Atomic(ssm_segment *) primary = NULL;

void ssm_set_primary(ssm_segment *seg) { atomic_store(&primary, seg); }
ssm_segment *ssm_get_primary(void) { return atomic_load(&primary); }

uint64_t ssm_next_id_p(void) {
    ssm_segment *seg = atomic_load_explicit(&primary, memory_order_acquire);
    return seg ? ssm_next_id(seg) : 0;
}

int ssm_claim_p(uint64_t id) {
    ssm_segment *seg = atomic_load_explicit(&primary, memory_order_acquire);
    return seg ? ssm_claim(seg, id) : SSM_ERANGE;
}

int ssm_state_p(uint64_t id) {
    ssm_segment *seg = atomic_load_explicit(&primary, memory_order_acquire);
    return seg ? ssm_state(seg, id) : SSM_STATE_UNKNOWN;
}

int64_t ssm_send_now(int fd, const char *buf, uint64_t len) {
    for (;;) {
        ssize_t n = send(fd, buf, (size_t)len, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (n >= 0)
            return (int64_t)n;
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return 0;
        return -(int64_t)errno;
    }
}

void ssm_noop(void) {}
uint64_t ssm_noop1(ssm_segment *seg) { return seg != NULL; }
