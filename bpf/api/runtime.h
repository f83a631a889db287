/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Runtime security's contract: process and network-operation events, the
 * rules that judge them, and the counters of what was lost or suppressed.
 *
 * Rules live in two banks of WEIR_RT_MAX_RULES; the config's generation
 * says which bank is live. An update writes the idle bank (and its pod
 * cgroup sets), then flips the generation in one write, so a judged
 * operation sees the old policy set or the new one, never a mix.
 *
 * Patterns (binary, parent binary, arguments, file path) are byte strings
 * in which WEIR_RT_ANY_RUN matches any run of bytes (including '/') and
 * WEIR_RT_ANY_ONE any one byte; userspace compiles exact, prefix, glob and
 * substring selectors into them. An empty pattern matches everything.
 */
#ifndef WEIR_API_RUNTIME_H
#define WEIR_API_RUNTIME_H

#define WEIR_RT_MAX_RULES 256
#define WEIR_RT_PATH_MAX 512 /* path buffers; components stop past 256 */
#define WEIR_RT_ARGS_MAX 1024
#define WEIR_RT_PATTERN_MAX 128
#define WEIR_RT_MAX_PROCS 32768
#define WEIR_RT_PROC_PATH_MAX 256 /* a live process's binary, for judging later operations */
#define WEIR_RT_MAX_RULE_CGROUPS 65536
#define WEIR_RT_ANY_RUN 0x01
#define WEIR_RT_ANY_ONE 0x02

#define WEIR_RT_EVENT_TYPES(X)                                           \
	X(EXEC, 0, "a process ran a new program (sched_process_exec)")    \
	X(FORK, 1, "a process was created (sched_process_fork)")          \
	X(EXIT, 2, "the last thread of a process exited")                 \
	X(CONNECT, 3, "connect() on an IPv4 or IPv6 socket")              \
	X(BIND, 4, "bind() on an IPv4 or IPv6 socket")                    \
	X(LISTEN, 5, "listen() on a socket")                              \
	X(ACCEPT, 6, "accept() returned a connection")                    \
	X(SOCKET, 7, "socket() creation a rule selected")                 \
	X(FILE_OPEN, 8, "a file open a rule selected (BPF LSM only)")     \
	X(SENDMSG, 9, "an unconnected send a connect rule selected")

#define WEIR_RT_EVENT_ENTRY(name, code, desc) WEIR_RT_EV_##name = code,
enum weir_rt_event_type {
	WEIR_RT_EVENT_TYPES(WEIR_RT_EVENT_ENTRY)
	WEIR_RT_EV_MAX,
};
#undef WEIR_RT_EVENT_ENTRY

/* Operations a rule can select: bit (1 << event type). */
#define WEIR_RT_OP(type) (1u << (type))

#define WEIR_RT_ACTIONS(X)                                                  \
	X(NONE, 0, "no rule matched")                                        \
	X(AUDIT, 1, "posted the event; the operation went ahead")           \
	X(KILL, 2, "SIGKILL before the new program ran an instruction")     \
	X(DENY, 3, "the operation failed with the rule's errno")

#define WEIR_RT_ACTION_ENTRY(name, code, desc) WEIR_RT_ACTION_##name = code,
enum weir_rt_action {
	WEIR_RT_ACTIONS(WEIR_RT_ACTION_ENTRY)
	WEIR_RT_ACTION_MAX,
};
#undef WEIR_RT_ACTION_ENTRY

/* Everything counted that did not become an event. Append-only. */
#define WEIR_RT_COUNTERS(X)                                                         \
	X(RING_FULL, 0, "lost: the ring buffer to the agent was full")              \
	X(RATE_LIMITED, 1, "suppressed: over the matching rule's rateLimit")        \
	X(PATH_TRUNCATED, 2, "posted with a path cut at its limit")                 \
	X(ARGS_TRUNCATED, 3, "posted with arguments cut at their limit")            \
	X(PROC_UNKNOWN, 4, "judged without the process's binary (not yet seen)")    \
	X(GLOB_STEPS, 5, "a pattern needed more than its step budget: no match")

#define WEIR_RT_COUNTER_ENTRY(name, code, desc) WEIR_RT_CNT_##name = code,
enum weir_rt_counter {
	WEIR_RT_COUNTERS(WEIR_RT_COUNTER_ENTRY)
	WEIR_RT_CNT_MAX,
};
#undef WEIR_RT_COUNTER_ENTRY

/* Event flags. */
#define WEIR_RT_F_PATH_TRUNCATED (1 << 0)
#define WEIR_RT_F_ARGS_TRUNCATED (1 << 1)
#define WEIR_RT_F_CWD_TRUNCATED (1 << 2)
#define WEIR_RT_F_LSM (1 << 3) /* judged by the BPF LSM hook */
#define WEIR_RT_F_FILELESS (1 << 4) /* the program is no file of any mount (memfd): path is its name */
#define WEIR_RT_F_DELETED (1 << 5)  /* the program's file has no link left */
#define WEIR_RT_F_CWD_DELETED (1 << 6)
#define WEIR_RT_F_LOADER (1 << 7) /* a dynamic loader run directly: path is the program it mapped */

/* What every event starts with. */
struct weir_rt_header {
	__u8 type;   /* enum weir_rt_event_type */
	__u8 action; /* enum weir_rt_action of the rule that matched */
	__u16 flags;
	__u32 pid;  /* thread group id */
	__u32 tid;
	__u32 ppid;
	__u32 uid;
	__u32 gid;
	__u32 rule; /* index + 1 of the matching rule in the live bank; 0: none */
	__s32 errno_;
	__u64 cgroup_id;
	__u64 ktime;      /* CLOCK_MONOTONIC ns of the event */
	__u64 start_time; /* CLOCK_MONOTONIC ns the process started */
	__u64 exit_code;  /* EXIT: the kernel's exit_code (status << 8 | signal) */
};

struct weir_rt_exec_event {
	struct weir_rt_header hdr;
	__u64 ino; /* the program file's identity: inode and the kernel's dev_t */
	__u32 dev;
	__u16 applet_off; /* the applet's name in args (see rt_applet) */
	__u16 applet_len;
	__u16 path_len;
	__u16 cwd_len;
	__u16 args_len;
	__u16 pad;
	char path[WEIR_RT_PATH_MAX];
	char cwd[WEIR_RT_PATH_MAX];
	char args[WEIR_RT_ARGS_MAX]; /* NUL-separated, as in the new process's memory */
};

/* An exec event as the ring carries it: the fixed part of
 * weir_rt_exec_event, then path_len bytes of path, cwd_len of cwd and
 * args_len of arguments back to back in `data`, and nothing after them. A
 * typical exec takes a tenth of the fixed layout's 2 KiB, so the ring holds
 * ten times the events. */
struct weir_rt_exec_record {
	struct weir_rt_header hdr;
	__u64 ino;
	__u32 dev;
	__u16 applet_off; /* within the arguments */
	__u16 applet_len;
	__u16 path_len;
	__u16 cwd_len;
	__u16 args_len;
	__u16 pad;
	char data[2 * WEIR_RT_PATH_MAX + WEIR_RT_ARGS_MAX];
};

struct weir_rt_net_event {
	struct weir_rt_header hdr;
	__u32 local_addr[4]; /* IPv4 in [0]; network order */
	__u32 remote_addr[4];
	__u16 local_port;    /* host order */
	__u16 remote_port;
	__u8 family;         /* 4, 6, or the AF_* of a SOCKET event */
	__u8 protocol;       /* IPPROTO_* when known */
	__u16 sock_type;     /* SOCKET: SOCK_* */
};

struct weir_rt_file_event {
	struct weir_rt_header hdr;
	__u16 path_len;
	__u16 pad[3];
	char path[WEIR_RT_PATH_MAX];
};

struct weir_rt_pattern {
	__u16 len;
	__u8 head;    /* leading literal bytes (at most 8), checked before any glob step */
	__u8 literal; /* no wildcards: the subject's length must be len */
	__u32 pad;
	__u64 head_bits; /* the first 8 subject bytes, masked with head_mask, must equal this */
	__u64 head_mask;
	char text[WEIR_RT_PATTERN_MAX];
};

/* Rule flags. */
#define WEIR_RT_R_UID (1 << 0)      /* uid must equal `uid` */
#define WEIR_RT_R_CGROUPS (1 << 1)  /* the cgroup must be in the rule's set (rt_rule_cgroups) */
#define WEIR_RT_R_ADDR (1 << 2)     /* the remote (connect) or local (bind) address must be in addr/prefix */
#define WEIR_RT_R_PORTS (1 << 3)    /* the port must be in [port_lo, port_hi] */
#define WEIR_RT_R_FAMILY (1 << 4)   /* family must equal `family` */
#define WEIR_RT_R_NOT_ADDR (1 << 5) /* with R_ADDR: must NOT be in addr/prefix (an `except`) */
#define WEIR_RT_R_BINARY_ID (1 << 6) /* the binary also matches by identity: binary_dev/binary_ino */
#define WEIR_RT_R_FILELESS (1 << 7)  /* the process's program must be fileless */

struct weir_rt_rule {
	__u32 ops;    /* WEIR_RT_OP(type) bits */
	__u32 flags;  /* WEIR_RT_R_* */
	__u8 action;  /* enum weir_rt_action */
	__u8 family;
	__u8 prefix_len;
	__u8 lsm_exec; /* exec DENY is enforced by the LSM hook, not by a kill */
	__s32 errno_;
	__u32 uid;
	__u32 rate_per_sec; /* 0: unlimited */
	__u16 port_lo;
	__u16 port_hi;
	__u32 addr[4];
	__u64 binary_ino;
	__u32 binary_dev;
	__u32 pad;
	struct weir_rt_pattern binary;
	struct weir_rt_pattern parent;
	struct weir_rt_pattern args;
	struct weir_rt_pattern file;
	struct weir_rt_pattern applet; /* exec only: a multi-call binary's applet */
};

struct weir_rt_rule_cgroup {
	__u32 rule; /* bank * WEIR_RT_MAX_RULES + index */
	__u32 pad;
	__u64 cgroup_id;
};

struct weir_rt_config {
	__u32 generation; /* bank = generation & 1 */
	__u32 rules;      /* rules in the live bank */
	__u32 ops;        /* union of the live rules' ops: skip judging the rest */
	__u8 network_events; /* post connect/bind/listen/accept with no rule */
	__u8 applets;        /* a live rule selects applets: find them at exec */
	__u8 pad[2];
};

/* rt_procs flags beyond the event flags of the exec (FILELESS, LOADER). */
#define WEIR_RT_PROC_LOADING (1 << 15) /* a dynamic loader run directly, its program not yet mapped */

/* A file's identity: inode and the kernel's dev_t (major << 20 | minor). */
struct weir_rt_file_id {
	__u64 ino;
	__u32 dev;
	__u32 pad;
};

/* What the kernel remembers of a live process, for judging its children
 * and its network operations. */
struct weir_rt_proc {
	__u32 ppid;
	__u16 path_len;
	__u16 flags; /* WEIR_RT_F_FILELESS, WEIR_RT_F_LOADER of its exec */
	__u64 exec_ktime;
	__u64 ino;
	__u32 dev;
	__u32 pad;
	char path[WEIR_RT_PROC_PATH_MAX];
};

struct weir_rt_rate {
	__u64 window; /* ktime / 1e9 of the current one-second window */
	__u64 posted;
};

#endif
