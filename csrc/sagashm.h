/* Shared-memory hot path of saga-supervisor.
 *
 * This header is read twice: by the C compiler, and by cffi's cdef (pycparser),
 * so it holds plain integer types only: no _Atomic, no macros in signatures.
 * Every exported name starts with `ssm_`; every function returns a status code
 * (SSM_OK or a negative SSM_E*) or a value where 0 is documented as "error".
 *
 * Layout of the segment: a 256-byte header, then `capacity` 64-bit slot words.
 * Slot word: 0 = free; (id << 1) = live saga `id`; (id << 1) | 1 = saga `id`,
 * terminal claimed.  A slot is reused by a newer id only once it is free or
 * claimed, so a late claim for an old id finds another tag and loses (ABA-safe).
 */

#define SSM_OK 0
#define SSM_ENOENT -1       /* no segment of that name */
#define SSM_EEXIST -2       /* a segment of that name exists already */
#define SSM_ESYS -3         /* a system call failed: errno is set */
#define SSM_EMAGIC -4       /* not a saga-supervisor segment (wrong magic) */
#define SSM_EVERSION -5     /* segment of another layout version */
#define SSM_ESIZE -6        /* size in header and size of the file disagree */
#define SSM_EFULL -7        /* the slot is held by a live saga / table full */
#define SSM_ERANGE -8       /* id is 0, or never allocated, or over the maximum */
#define SSM_EOVERFLOW -9    /* the id counter would pass the maximum id */
#define SSM_EUNINIT -10     /* segment exists but its creator has not finished */
#define SSM_ECAPACITY -11   /* capacity not a power of two in range */
#define SSM_EFENCE -12      /* the id would pass the fence (id_limit): wait for it to rise */

#define SSM_STATE_UNKNOWN 0 /* id not in the table: never registered, or its slot was reused */
#define SSM_STATE_LIVE 1
#define SSM_STATE_CLAIMED 2

typedef struct ssm_segment ssm_segment;

/* Compile-time constants exposed to Python (checked at import). */
uint64_t ssm_magic(void);
uint32_t ssm_layout_version(void);
uint64_t ssm_max_id(void);
uint64_t ssm_max_capacity(void);
uint32_t ssm_header_size(void);

int ssm_create(const char *name, uint64_t capacity, uint64_t first_id, uint64_t id_limit,
               int64_t creator_pid, uint64_t creator_token, ssm_segment **out);
int ssm_attach(const char *name, ssm_segment **out);
void ssm_detach(ssm_segment *seg);
int ssm_unlink(const char *name);

uint64_t ssm_capacity(ssm_segment *seg);
int64_t ssm_creator_pid(ssm_segment *seg);
uint64_t ssm_creator_token(ssm_segment *seg);
uint64_t ssm_peek_next_id(ssm_segment *seg);

/* The id fence: no id at or past id_limit is handed out, so that a durable
 * high-water mark written before the fence rises stays ahead of every id
 * handed out (the supervisor raises it; it never goes down). */
uint64_t ssm_id_limit(ssm_segment *seg);
uint64_t ssm_raise_id_limit(ssm_segment *seg, uint64_t limit);

/* Hot path. next_id/reserve return the (first) id, 0 on overflow, or
 * (uint64_t)SSM_EFENCE (above ssm_max_id()) at the fence. */
uint64_t ssm_next_id(ssm_segment *seg);
uint64_t ssm_reserve(ssm_segment *seg, uint64_t n);
int ssm_register(ssm_segment *seg, uint64_t id);
/* Put in flight an id this segment never allocated: another fleet node's,
 * for a saga taken over from it. Its slot is taken if free or holding a
 * claimed saga, whatever that saga's id (ids of other nodes are not ordered
 * with ours: a slot then holding an id above the counter only makes acquire
 * skip that id); never a live one (SSM_EFULL). */
int ssm_adopt(ssm_segment *seg, uint64_t id);
/* Allocate a fresh id and register it, skipping ids whose slot is live.
 * Returns the id, or (uint64_t)SSM_EFULL / (uint64_t)SSM_EOVERFLOW cast to
 * unsigned (values above ssm_max_id()) on failure, or (uint64_t)SSM_EFENCE. */
uint64_t ssm_acquire(ssm_segment *seg, uint64_t max_tries);
int ssm_claim(ssm_segment *seg, uint64_t id);
/* Undo a claim whose holder died before its outcome was made visible: the
 * supervisor inherits it and, when replay does not re-derive a terminal,
 * puts the saga back in flight. 1 if reopened, 0 if not claimed by `id`. */
int ssm_reopen(ssm_segment *seg, uint64_t id);
int ssm_state(ssm_segment *seg, uint64_t id);
int64_t ssm_in_flight(ssm_segment *seg);

/* The same hot calls on the process's *primary* segment, kept in a C global:
 * 0-1 arguments take cffi's fast calling path (about half the cost of a
 * 2-argument call). ssm_set_primary(NULL) clears it; the _p calls then
 * return 0 (ids) or SSM_ERANGE (claim) / SSM_STATE_UNKNOWN (state). */
void ssm_set_primary(ssm_segment *seg);
ssm_segment *ssm_get_primary(void);
uint64_t ssm_next_id_p(void);
int ssm_claim_p(uint64_t id);
int ssm_state_p(uint64_t id);

/* Send what the socket `fd` takes now of buf[0..len), never blocking
 * (MSG_DONTWAIT) and never raising SIGPIPE (MSG_NOSIGNAL): the bytes sent,
 * 0 if it takes none now, or -errno. Like every call here it keeps the GIL
 * (see build.py), so a client's small request leaves without handing the
 * GIL to a busy thread of its process and waiting a switch interval for it. */
int64_t ssm_send_now(int fd, const char *buf, uint64_t len);

/* The floor of any cffi call, for the benchmarks. */
void ssm_noop(void);
uint64_t ssm_noop1(ssm_segment *seg);
