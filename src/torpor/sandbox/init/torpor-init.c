/*
 * torpor-init: PID 1 of every torpor sandbox, and the client that talks to it.
 *
 * On the pinned gVisor build only descendants of the sandbox's first process
 * survive checkpoint/restore, so every process torpor starts is a child of
 * this program. `init init` is the long-lived PID 1: it listens on a Unix
 * socket, starts processes on request, stores their output in files, streams
 * it to the client that asked, and reaps every zombie. All other roles (exec,
 * ps, kill, input, forget, logs, get, put, stat, ls, mkdir, rm, mv, restored,
 * ping) are short-lived clients: run on the host as `init --connect SOCKET ROLE
 * ...` through the host channel (see below), or inside the sandbox as
 * `/.torpor/init ROLE ...`
 * (the host runs the file roles there, as children of PID 1).
 * `supervise` runs on the host too: it is what runsc runs under.
 *
 * The contract (argv, wire protocol, file layout) is docs/sandbox-init.md.
 * Build: musl-gcc -static -O2 -Wall -Wextra -o torpor-init torpor-init.c
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <sched.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define DEFAULT_DIR "/run/torpor"
#define DEFAULT_RESTORE_DIR "/etc/torpor/restore.d"
#define DEFAULT_PATH "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#define CHUNK 65536
#define MAX_FRAME (16u << 20)   /* largest frame payload accepted */
#define HIGH_WATER (1u << 20)   /* per-buffer backpressure threshold */
#define STOP_GRACE_MS 3000      /* after the main process exits: TERM -> KILL */
#define HOOK_TIMEOUT_MS 10000   /* per restore hook */
#define EXIT_CLIENT 125         /* client-side failure (cannot reach init, ...) */

static char g_dir[PATH_MAX];    /* TORPOR_INIT_DIR */
static char g_sock[PATH_MAX];   /* g_dir/ctl.sock (a client's target: --connect moves it) */
static int g_remote;            /* client run on the host through the host channel */
static int g_prefd = -1;        /* a connection made ahead (the host waits for the socket once) */
static pid_t g_alive;           /* --alive PID: the sandbox's host process; stop waiting once it is gone */
#define SELF_PATH "/.torpor/init"   /* where the host mounts this binary in a sandbox */
extern char **environ;

/* ------------------------------------------------------------------ */
/* Small helpers                                                        */

/* snprintf that truncates silently (paths are bounded by PATH_MAX anyway). */
static int fmt(char *dst, size_t n, const char *f, ...) __attribute__((format(printf, 3, 4)));
static int fmt(char *dst, size_t n, const char *f, ...)
{
    va_list ap;
    va_start(ap, f);
    int r = vsnprintf(dst, n, f, ap);
    va_end(ap);
    return r < 0 ? 0 : (size_t)r >= n ? (int)n - 1 : r;
}

static void msg(const char *f, ...)
{
    char b[1024];
    va_list ap;
    va_start(ap, f);
    int n = vsnprintf(b, sizeof b - 1, f, ap);
    va_end(ap);
    if (n < 0) return;
    if (n > (int)sizeof b - 2) n = sizeof b - 2;
    b[n++] = '\n';
    if (write(2, "torpor-init: ", 13) < 0 || write(2, b, n) < 0) { /* nothing to do */ }
}

static void *xrealloc(void *p, size_t n)
{
    p = realloc(p, n ? n : 1);
    if (!p) { msg("out of memory"); _exit(EXIT_CLIENT); }
    return p;
}

static char *xstrdup(const char *s) { size_t n = strlen(s) + 1; return memcpy(xrealloc(NULL, n), s, n); }

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Write all of buf, retrying on EINTR and waiting out EAGAIN. 0 or -1. */
static int write_all(int fd, const void *buf, size_t n)
{
    const char *p = buf;
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN) { struct pollfd q = {fd, POLLOUT, 0}; poll(&q, 1, -1); continue; }
            return -1;
        }
        p += w; n -= (size_t)w;
    }
    return 0;
}

/* Read exactly n bytes unless EOF comes first. Bytes read, or -1. */
static ssize_t read_full(int fd, void *buf, size_t n)
{
    size_t got = 0;
    while (got < n) {
        ssize_t r = read(fd, (char *)buf + got, n - got);
        if (r < 0) { if (errno == EINTR) continue; return -1; }
        if (r == 0) break;
        got += (size_t)r;
    }
    return (ssize_t)got;
}

/* Replace a file atomically (write a temp file, rename). */
static int write_file(const char *path, const void *data, size_t n)
{
    char tmp[PATH_MAX];
    fmt(tmp, sizeof tmp, "%s.tmp", path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) return -1;
    int rc = write_all(fd, data, n);
    close(fd);
    if (rc == 0) rc = rename(tmp, path);
    return rc;
}

static int mkdir_p(const char *path, mode_t mode)
{
    char b[PATH_MAX];
    fmt(b, sizeof b, "%s", path);
    for (char *p = b + 1; *p; p++) {
        if (*p != '/') continue;
        *p = 0;
        if (mkdir(b, mode) < 0 && errno != EEXIST) return -1;
        *p = '/';
    }
    return (mkdir(b, mode) < 0 && errno != EEXIST) ? -1 : 0;
}

static void rm_rf(const char *path)
{
    struct stat st;
    if (lstat(path, &st) < 0) return;
    if (S_ISDIR(st.st_mode)) {
        DIR *d = opendir(path);
        struct dirent *e;
        while (d && (e = readdir(d))) {
            if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
            char c[PATH_MAX];
            fmt(c, sizeof c, "%s/%s", path, e->d_name);
            rm_rf(c);
        }
        if (d) closedir(d);
        rmdir(path);
    } else {
        unlink(path);
    }
}

static void put32(unsigned char *p, uint32_t v) { for (int i = 3; i >= 0; i--) { p[i] = v & 0xff; v >>= 8; } }
static void put64(unsigned char *p, uint64_t v) { for (int i = 7; i >= 0; i--) { p[i] = v & 0xff; v >>= 8; } }
static uint32_t get32(const unsigned char *p) { return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3]; }
static uint64_t get64(const unsigned char *p) { return (uint64_t)get32(p) << 32 | get32(p + 4); }

/* Growable byte buffer; bytes [off, len) are pending. */
struct buf { char *p; size_t off, len, cap; };

static size_t buf_size(const struct buf *b) { return b->len - b->off; }

static void buf_add(struct buf *b, const void *d, size_t n)
{
    if (b->off && b->off == b->len) b->off = b->len = 0;
    if (b->len + n > b->cap) {
        if (b->off) { memmove(b->p, b->p + b->off, b->len - b->off); b->len -= b->off; b->off = 0; }
        if (b->len + n > b->cap) {
            b->cap = (b->len + n) * 2;
            b->p = xrealloc(b->p, b->cap);
        }
    }
    memcpy(b->p + b->len, d, n);
    b->len += n;
}

static void buf_frame(struct buf *b, char type, const void *d, size_t n)
{
    unsigned char h[5];
    h[0] = (unsigned char)type;
    put32(h + 1, (uint32_t)n);
    buf_add(b, h, 5);
    buf_add(b, d, n);
}

static void buf_free(struct buf *b) { free(b->p); memset(b, 0, sizeof *b); }

static const struct { const char *name; int num; } sigtab[] = {
    {"HUP", SIGHUP}, {"INT", SIGINT}, {"QUIT", SIGQUIT}, {"ABRT", SIGABRT}, {"KILL", SIGKILL},
    {"USR1", SIGUSR1}, {"USR2", SIGUSR2}, {"PIPE", SIGPIPE}, {"ALRM", SIGALRM}, {"TERM", SIGTERM},
    {"CHLD", SIGCHLD}, {"CONT", SIGCONT}, {"STOP", SIGSTOP}, {"TSTP", SIGTSTP}, {"WINCH", SIGWINCH},
};

/* Signal name (TERM, SIGTERM) or number to number; -1 if invalid. */
static int parse_signal(const char *s)
{
    char *end;
    long n = strtol(s, &end, 10);
    if (*s && !*end) return (n >= 0 && n < NSIG) ? (int)n : -1;
    if (!strncasecmp(s, "SIG", 3)) s += 3;
    for (size_t i = 0; i < sizeof sigtab / sizeof sigtab[0]; i++)
        if (!strcasecmp(s, sigtab[i].name)) return sigtab[i].num;
    return -1;
}

static int wait_code(int st) { return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st); }

/* In a freshly forked child: undo init's signal setup before exec. */
static void child_reset_signals(void)
{
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    for (int s = 1; s < NSIG; s++) signal(s, SIG_DFL);   /* errors for KILL/STOP are fine */
}

/* ------------------------------------------------------------------ */
/* PID 1: state                                                         */

enum { ST_NEW, ST_ATTACHED, ST_RESTORE, ST_CLOSING, ST_FEED };

struct proc;
struct client {
    int fd;                 /* -1 once closed (swept at end of loop iteration) */
    int state;
    struct buf in, out;
    struct proc *p;         /* attached process (ST_ATTACHED) */
    struct proc *feed;      /* process whose stdin this client writes (ST_FEED) */
    int host;               /* connected through the host channel */
};

struct proc {
    int id;
    pid_t pid;
    char *cmd;              /* argv joined by spaces, for ps */
    int out, err, in;       /* our ends of the child's pipes, -1 when closed */
    int fout, ferr;         /* procs/ID/stdout, procs/ID/stderr */
    struct buf inbuf;       /* stdin bytes not yet written to the child */
    int in_eof;             /* close the child's stdin once inbuf is empty */
    int reaped, done, status;
    int is_main;
    int forgotten;          /* foreground exec whose client got everything: files removed */
    struct client *cl;      /* attached client or NULL */
};

static struct proc **g_procs;
static int g_nprocs, g_next_id = 1;
static struct client **g_clients;
static int g_nclients;
static struct proc *g_main;
static int g_terminating;          /* got SIGTERM/SIGINT */
static int g_phase;                /* 0 running, 1 main gone: TERM sent, 2: KILL sent */
static long long g_deadline;
static int g_exit_code;
static char g_restore_token[64];    /* the host's token of the last announced restore */
static int g_console;              /* tee main's output to init's own stdout */

/* The host channel (`init init -H DIR`): a second listening socket, DIR/init.sock, on a
 * directory the host bind-mounts, so the host talks to init directly instead of starting a
 * `runsc exec` client (~50 ms of Go start-up) for every call. gVisor cannot save a socket
 * bound on a host file, so the host asks init to `prepare` before a checkpoint: init
 * closes that socket and its host connections, remembers DIR/token, and from then on
 * checks DIR/token every PREPARED_POLL_MS. The host writes a new token before it restores
 * the checkpoint ("restored ID": announce the restore, as `restored` does, then listen
 * again once the hooks are done) or when the sandbox kept running ("resumed ID": listen
 * again). */
#define PREPARED_POLL_MS 2
static char g_host_sock[PATH_MAX], g_host_token[PATH_MAX];
static int g_hfd = -1;             /* host listener, -1 when closed */
static int g_prepared;             /* host channel closed for a checkpoint: watch the token */
static int g_relisten;             /* listen again once the restore hooks are done */
static char g_prep_token[128];

/* restore hooks */
static int g_gen;
static char **g_hooks;
static int g_nhooks, g_hook_idx, g_hook_rerun, g_hooks_active, g_hook_log = -1;
static pid_t g_hook_pid;
static long long g_hook_deadline;

static void send_frame(struct client *c, char type, const char *d, size_t n)
{
    if (c && c->fd >= 0) buf_frame(&c->out, type, d, n);
}

static void send_str(struct client *c, char type, const char *s) { send_frame(c, type, s, strlen(s)); }

static void send_exit(struct client *c, int code)
{
    char b[16];
    fmt(b, sizeof b, "%d", code);
    send_str(c, 'X', b);
    if (c && c->fd >= 0) c->state = ST_CLOSING;   /* closed once out is flushed */
}

static void proc_close_stdin(struct proc *p)
{
    if (p->in >= 0) close(p->in);
    p->in = -1;
    buf_free(&p->inbuf);
}

/* A process is finished once it has been reaped and both pipes hit EOF:
 * only then is the exit file written and X sent. */
static void proc_check_done(struct proc *p)
{
    if (p->done || !p->reaped || p->out >= 0 || p->err >= 0) return;
    p->done = 1;
    proc_close_stdin(p);
    char path[PATH_MAX], b[16];
    int n = fmt(b, sizeof b, "%d\n", p->status);
    fmt(path, sizeof path, "%s/procs/%d/exit", g_dir, p->id);
    if (write_file(path, b, (size_t)n) < 0) msg("write %s: %s", path, strerror(errno));
    close(p->fout); close(p->ferr);
    p->fout = p->ferr = -1;
    if (p->cl) {
        send_exit(p->cl, p->status);
        p->cl->p = NULL;
        p->cl = NULL;
        /* A foreground exec whose client received all of its output and its status
         * leaves nothing behind: its files would otherwise sit in the sandbox's memory
         * (and every snapshot) forever. Detached processes, and foreground ones whose
         * client went away, keep their files. */
        if (!p->is_main) {
            fmt(path, sizeof path, "%s/procs/%d", g_dir, p->id);
            rm_rf(path);
            p->forgotten = 1;
        }
    }
}

/* Read one chunk from a child's stdout/stderr pipe; file, console, client. */
static void proc_read(struct proc *p, int is_err)
{
    int *fd = is_err ? &p->err : &p->out;
    char b[CHUNK];
    ssize_t n = read(*fd, b, sizeof b);
    if (n < 0 && (errno == EINTR || errno == EAGAIN)) return;
    if (n <= 0) { close(*fd); *fd = -1; proc_check_done(p); return; }
    if (write_all(is_err ? p->ferr : p->fout, b, (size_t)n) < 0)
        msg("write output of %d: %s", p->id, strerror(errno));
    /* Both of main's streams go to init's stdout, the sandbox console the host keeps as
     * the sandbox's log; init's own stderr carries only init's and runsc's messages.
     * Best effort, never blocks (fds are non-blocking). */
    if (p->is_main && g_console) {
        if (write(1, b, (size_t)n) < 0) { /* dropped */ }
    }
    if (p->cl) send_frame(p->cl, is_err ? 'E' : 'O', b, (size_t)n);
}

static void proc_write_stdin(struct proc *p)
{
    while (p->in >= 0 && buf_size(&p->inbuf)) {
        ssize_t w = write(p->in, p->inbuf.p + p->inbuf.off, buf_size(&p->inbuf));
        if (w < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN) return;
            proc_close_stdin(p);   /* EPIPE: the child closed its stdin */
            return;
        }
        p->inbuf.off += (size_t)w;
    }
    if (p->in >= 0 && p->in_eof) proc_close_stdin(p);
}

/* Signal every unfinished process group (optionally sparing one process). */
static void signal_all(int sig, struct proc *except)
{
    for (int i = 0; i < g_nprocs; i++) {
        struct proc *p = g_procs[i];
        if (p->done || p == except) continue;
        if (kill(-p->pid, sig) < 0 && !p->reaped) kill(p->pid, sig);
    }
    if (g_hook_pid) kill(-g_hook_pid, sig);
    /* Inside the sandbox, also catch anything that escaped its group. Never
     * outside PID 1: kill(-1) there would hit every process of the user. */
    if (sig == SIGKILL && getpid() == 1) kill(-1, SIGKILL);
}

/* ------------------------------------------------------------------ */
/* PID 1: starting processes                                            */

struct child_err { int stage; int err; };
enum { STAGE_SETUP, STAGE_USER, STAGE_CHDIR, STAGE_EXEC };

/* gid of uid from /etc/passwd (no NSS in a static binary); uid if unknown. */
static gid_t passwd_gid(uid_t uid)
{
    FILE *f = fopen("/etc/passwd", "re");
    char line[1024];
    gid_t gid = uid;
    while (f && fgets(line, sizeof line, f)) {
        char *fld[4] = {0}, *s = line;
        for (int i = 0; i < 4 && s; i++) { fld[i] = s; s = strchr(s, ':'); if (s) *s++ = 0; }
        if (fld[3] && strtoul(fld[2], NULL, 10) == uid) { gid = (gid_t)strtoul(fld[3], NULL, 10); break; }
    }
    if (f) fclose(f);
    return gid;
}

/* "uid[:gid]" -> ids (gid from /etc/passwd when not given). -1 with errno on a bad spec. */
static int parse_user(const char *spec, uid_t *uid, gid_t *gid)
{
    char *end;
    unsigned long u = strtoul(spec, &end, 10);
    if (end == spec || (*end && *end != ':')) { errno = EINVAL; return -1; }
    if (*end == ':') {
        const char *g = end + 1;
        unsigned long gv = strtoul(g, &end, 10);
        if (end == g || *end) { errno = EINVAL; return -1; }
        *gid = (gid_t)gv;
    } else {
        *gid = passwd_gid((uid_t)u);
    }
    *uid = (uid_t)u;
    return 0;
}

static void exec_search(char **argv, char **envp);

/* The stack spawn_child runs on: one is enough, init waits for each child to exec. */
static char g_spawn_stack[64 * 1024] __attribute__((aligned(16)));

/* What a new process needs, prepared by start_proc before the child exists. */
struct spawn_args {
    char **argv, **envp;
    const char *cwd;
    int have_user, user_err;    /* user_err: why the user spec was refused (0: it was not) */
    uid_t uid;
    gid_t gid;
    int in_fd, out_fd, err_fd;  /* in_fd -1: /dev/null */
    int err_pipe;               /* close-on-exec: gets a child_err if the exec never happens */
};

/*
 * The child side of start_proc, run by clone(CLONE_VM | CLONE_VFORK) on a stack of its
 * own: it shares init's memory until it execs (init waits meanwhile), so it only makes
 * system calls and writes to its own stack: no malloc, no stdio. Under gVisor this saves
 * copying init's address space for a child that replaces it at once: a fork + exec of
 * /bin/true measured 15-17 ms of CPU in a sandbox here, a vfork + exec 6-9 ms.
 */
static int spawn_child(void *arg)
{
    struct spawn_args *a = arg;
    struct child_err ce = {STAGE_SETUP, 0};
    child_reset_signals();
    setsid();
    int in = a->in_fd >= 0 ? a->in_fd : open("/dev/null", O_RDONLY);
    if (in < 0 || dup2(in, 0) < 0 || dup2(a->out_fd, 1) < 0 || dup2(a->err_fd, 2) < 0) goto fail;
    ce.stage = STAGE_USER;
    if (a->have_user) {
        gid_t gl = a->gid;
        if (a->user_err) { errno = a->user_err; goto fail; }
        /* Raw system calls: libc's setuid/setgid/setgroups synchronise every thread of
         * the process, and this child is not one of init's threads. */
        if (syscall(SYS_setgroups, 1, &gl) < 0 && errno != EPERM) goto fail;
        if (syscall(SYS_setgid, a->gid) < 0 || syscall(SYS_setuid, a->uid) < 0) goto fail;
    }
    ce.stage = STAGE_CHDIR;
    if (a->cwd && *a->cwd && chdir(a->cwd) < 0) goto fail;
    ce.stage = STAGE_EXEC;
    exec_search(a->argv, a->envp);
fail:
    ce.err = errno;
    if (write(a->err_pipe, &ce, sizeof ce) < 0) { /* parent will see EOF */ }
    _exit(ce.stage == STAGE_EXEC && ce.err == ENOENT ? 127 : 126);
}

/* execvp() with the PATH of envp. Returns only on failure, errno set. */
static void exec_search(char **argv, char **envp)
{
    const char *file = argv[0], *path = DEFAULT_PATH;
    if (!*file) { errno = ENOENT; return; }
    if (strchr(file, '/')) { execve(file, argv, envp); return; }
    for (char **e = envp; *e; e++)
        if (!strncmp(*e, "PATH=", 5)) path = *e + 5;
    int eacces = 0;
    for (const char *s = path;; s++) {
        const char *colon = strchr(s, ':');
        size_t len = colon ? (size_t)(colon - s) : strlen(s);
        char full[PATH_MAX];
        if (len) fmt(full, sizeof full, "%.*s/%s", (int)len, s, file);
        else fmt(full, sizeof full, "./%s", file);   /* empty PATH entry: cwd */
        execve(full, argv, envp);
        if (errno == EACCES) eacces = 1;
        else if (errno != ENOENT && errno != ENOTDIR && errno != ELOOP && errno != ENAMETOOLONG) return;
        if (!colon) break;
        s = colon;
    }
    errno = eacces ? EACCES : ENOENT;
}

/* init's environment plus the request's K=V entries (request wins). */
static char **build_env(char **envs, int nenv)
{
    int n = 0;
    while (environ[n]) n++;
    char **env = xrealloc(NULL, sizeof(char *) * (size_t)(n + nenv + 1));
    memcpy(env, environ, sizeof(char *) * (size_t)n);
    for (int i = 0; i < nenv; i++) {
        const char *eq = strchr(envs[i], '=');
        size_t klen = eq ? (size_t)(eq - envs[i]) + 1 : strlen(envs[i]);
        int j;
        for (j = 0; j < n; j++)
            if (!strncmp(env[j], envs[i], klen)) break;
        env[j] = envs[i];
        if (j == n) n++;
    }
    env[n] = NULL;
    return env;
}

/*
 * Start argv as a new process with its own session, output pipes and files.
 * Returns NULL (errmsg set) if it could not even be forked. If exec (or
 * chdir/user switching) failed in the child, the proc is returned and errmsg
 * says why; the child then exits 126/127 and is reaped like any other.
 */
static struct proc *start_proc(char **argv, int argc, char **envs, int nenv, const char *cwd,
                               const char *user, int want_stdin, int nofile, char *errmsg,
                               size_t errlen)
{
    errmsg[0] = 0;
    int id = g_next_id++;
    char dir[PATH_MAX], path[PATH_MAX + 16];
    fmt(dir, sizeof dir, "%s/procs/%d", g_dir, id);
    if (mkdir(dir, 0755) < 0 && errno != EEXIST) {
        fmt(errmsg, errlen, "torpor-init: mkdir %s: %s", dir, strerror(errno));
        return NULL;
    }
    struct buf cl = {0};
    for (int i = 0; i < argc; i++) buf_add(&cl, argv[i], strlen(argv[i]) + 1);
    fmt(path, sizeof path, "%s/cmdline", dir);
    write_file(path, cl.p, cl.len);
    for (size_t i = 0; i + 1 < cl.len; i++) if (!cl.p[i]) cl.p[i] = ' ';   /* ps form */

    struct proc *p = xrealloc(NULL, sizeof *p);
    memset(p, 0, sizeof *p);
    p->id = id;
    p->cmd = cl.p;
    p->in = -1;
    /* nofile: the output is only streamed to the client (file transfers through the host
     * channel), so it does not sit in the sandbox's memory meanwhile. */
    fmt(path, sizeof path, "%s/stdout", dir);
    p->fout = open(nofile ? "/dev/null" : path, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC, 0644);
    fmt(path, sizeof path, "%s/stderr", dir);
    p->ferr = open(nofile ? "/dev/null" : path, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC, 0644);

    int po[2], pe[2], pi[2] = {-1, -1}, px[2];
    if (p->fout < 0 || p->ferr < 0 || pipe2(po, O_CLOEXEC) < 0 || pipe2(pe, O_CLOEXEC) < 0 ||
        (want_stdin && pipe2(pi, O_CLOEXEC) < 0) || pipe2(px, O_CLOEXEC) < 0) {
        fmt(errmsg, errlen, "torpor-init: cannot start %s: %s", argv[0], strerror(errno));
        return NULL;   /* leaks a few fds: out of fds/memory means the sandbox is broken anyway */
    }
    /* Everything that allocates or reads files happens here, before the child exists: the
     * child shares this process's memory until it execs (see spawn_child). */
    struct spawn_args a = {.cwd = cwd, .in_fd = want_stdin ? pi[0] : -1, .out_fd = po[1],
                           .err_fd = pe[1], .err_pipe = px[1]};
    if (user && *user) {
        a.have_user = 1;
        a.user_err = parse_user(user, &a.uid, &a.gid) < 0 ? errno : 0;
    }
    a.argv = xrealloc(NULL, sizeof(char *) * (size_t)(argc + 1));
    memcpy(a.argv, argv, sizeof(char *) * (size_t)argc);
    a.argv[argc] = NULL;
    a.envp = build_env(envs, nenv);
    sigset_t all, old;
    sigfillset(&all);
    sigprocmask(SIG_SETMASK, &all, &old);
    pid_t pid = clone(spawn_child, g_spawn_stack + sizeof g_spawn_stack,
                      CLONE_VM | CLONE_VFORK | SIGCHLD, &a);
    int clone_errno = errno;
    sigprocmask(SIG_SETMASK, &old, NULL);
    free(a.argv);
    free(a.envp);
    if (pid < 0) {
        fmt(errmsg, errlen, "torpor-init: clone: %s", strerror(clone_errno));
        close(po[0]); close(po[1]); close(pe[0]); close(pe[1]); close(px[0]); close(px[1]);
        if (pi[0] >= 0) { close(pi[0]); close(pi[1]); }
        close(p->fout); close(p->ferr); free(p->cmd); free(p);
        return NULL;
    }
    close(po[1]); close(pe[1]); close(px[1]);
    if (want_stdin) close(pi[0]);
    p->pid = pid;
    p->out = po[0];
    p->err = pe[0];
    p->in = pi[1];
    fcntl(p->out, F_SETFL, O_NONBLOCK);
    fcntl(p->err, F_SETFL, O_NONBLOCK);
    if (p->in >= 0) fcntl(p->in, F_SETFL, O_NONBLOCK);

    /* The error pipe is close-on-exec: EOF means exec succeeded. */
    struct child_err ce;
    if (read_full(px[0], &ce, sizeof ce) == (ssize_t)sizeof ce) {
        const char *what = ce.stage == STAGE_EXEC ? "exec" : ce.stage == STAGE_CHDIR ? "chdir"
                           : ce.stage == STAGE_USER ? "user" : "setup";
        const char *arg = ce.stage == STAGE_EXEC ? argv[0] : ce.stage == STAGE_CHDIR ? cwd
                          : ce.stage == STAGE_USER ? user : "stdio";
        fmt(errmsg, errlen, "torpor-init: %s %s: %s", what, arg, strerror(ce.err));
        write_all(p->ferr, errmsg, strlen(errmsg));
        write_all(p->ferr, "\n", 1);
    }
    close(px[0]);
    g_procs = xrealloc(g_procs, sizeof(*g_procs) * (size_t)(g_nprocs + 1));
    g_procs[g_nprocs++] = p;
    return p;
}

/* ------------------------------------------------------------------ */
/* PID 1: restore hooks                                                 */

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static void hook_log(const char *f, ...)
{
    char b[1024];
    va_list ap;
    va_start(ap, f);
    int n = vsnprintf(b, sizeof b, f, ap);
    va_end(ap);
    if (g_hook_log >= 0 && n > 0) write_all(g_hook_log, b, (size_t)(n < (int)sizeof b ? n : (int)sizeof b - 1));
}

static void hooks_next(void);

static void hooks_start(void)
{
    const char *rd = getenv("TORPOR_RESTORE_DIR");
    if (!rd || !*rd) rd = DEFAULT_RESTORE_DIR;
    char path[PATH_MAX];
    fmt(path, sizeof path, "%s/restore-hooks.log", g_dir);
    g_hook_log = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    g_nhooks = g_hook_idx = 0;
    g_hooks_active = 1;
    DIR *d = opendir(rd);
    struct dirent *e;
    while (d && (e = readdir(d))) {
        struct stat st;
        if (e->d_name[0] == '.') continue;
        fmt(path, sizeof path, "%s/%s", rd, e->d_name);
        if (stat(path, &st) < 0 || !S_ISREG(st.st_mode) || access(path, X_OK) < 0) continue;
        g_hooks = xrealloc(g_hooks, sizeof(char *) * (size_t)(g_nhooks + 1));
        g_hooks[g_nhooks++] = xstrdup(path);
    }
    if (d) closedir(d);
    qsort(g_hooks, (size_t)g_nhooks, sizeof(char *), cmp_str);
    hooks_next();
}

/* Start the next hook, or finish the run and answer the waiting clients. */
static void hooks_next(void)
{
    while (g_hook_idx < g_nhooks) {
        const char *h = g_hooks[g_hook_idx];
        hook_log("torpor-init: generation %d: running %s\n", g_gen, h);
        pid_t pid = fork();
        if (pid == 0) {
            child_reset_signals();
            setsid();
            int nul = open("/dev/null", O_RDONLY);
            dup2(nul, 0);
            dup2(g_hook_log, 1);
            dup2(g_hook_log, 2);
            char gen[32];
            fmt(gen, sizeof gen, "%d", g_gen);
            setenv("TORPOR_GENERATION", gen, 1);
            execl(h, h, (char *)NULL);
            msg("exec %s: %s", h, strerror(errno));
            _exit(126);
        }
        if (pid > 0) { g_hook_pid = pid; g_hook_deadline = now_ms() + HOOK_TIMEOUT_MS; return; }
        hook_log("torpor-init: fork: %s\n", strerror(errno));
        g_hook_idx++;
    }
    for (int i = 0; i < g_nhooks; i++) free(g_hooks[i]);
    g_nhooks = 0;
    if (g_hook_log >= 0) close(g_hook_log);
    g_hook_log = -1;
    g_hooks_active = 0;
    if (g_hook_rerun) { g_hook_rerun = 0; hooks_start(); return; }
    for (int i = 0; i < g_nclients; i++)
        if (g_clients[i]->state == ST_RESTORE) send_exit(g_clients[i], 0);
}

static void hook_reaped(int code)
{
    if (code) hook_log("torpor-init: %s exited with status %d\n", g_hooks[g_hook_idx], code);
    g_hook_pid = 0;
    g_hook_idx++;
    hooks_next();
}

/* ------------------------------------------------------------------ */
/* PID 1: requests                                                      */

static struct proc *find_proc(const char *id)
{
    for (int i = 0; i < g_nprocs; i++) {
        char b[16];
        fmt(b, sizeof b, "%d", g_procs[i]->id);
        if (!strcmp(b, id)) return g_procs[i];
    }
    return NULL;
}

static void req_spawn(struct client *c, char **s, int n)
{
    int detach = 0, want_stdin = 0, nofile = 0, nenv = 0, i = 1;
    const char *cwd = NULL, *user = NULL;
    char **envs = xrealloc(NULL, sizeof(char *) * (size_t)n);
    for (; i + 1 < n && strcmp(s[i], "--"); i += 2) {
        if (!strcmp(s[i], "detach")) detach = !strcmp(s[i + 1], "1");
        else if (!strcmp(s[i], "stdin")) want_stdin = !strcmp(s[i + 1], "1");
        else if (!strcmp(s[i], "nofile")) nofile = !strcmp(s[i + 1], "1");
        else if (!strcmp(s[i], "cwd")) cwd = s[i + 1];
        else if (!strcmp(s[i], "env")) envs[nenv++] = s[i + 1];
        else if (!strcmp(s[i], "user")) user = s[i + 1];
    }
    if (i >= n || strcmp(s[i], "--") || i + 1 >= n) {
        free(envs);
        send_str(c, 'F', "torpor-init: bad spawn request (no command)");
        send_exit(c, 2);
        return;
    }
    char err[PATH_MAX + 256];
    struct proc *p = start_proc(s + i + 1, n - i - 1, envs, nenv, cwd, user, want_stdin,
                                nofile && !detach, err, sizeof err);
    free(envs);
    if (!p) { send_str(c, 'F', err); send_exit(c, 126); return; }
    char b[16];
    fmt(b, sizeof b, "%d", p->id);
    send_str(c, 'P', b);
    if (err[0]) send_str(c, 'F', err);
    if (detach && !err[0]) { send_exit(c, 0); return; }
    c->state = ST_ATTACHED;   /* exec failures stay attached so X carries 126/127 */
    c->p = p;
    p->cl = c;
}

static void client_gone(struct client *c);

/* `input ID`: the client writes the stdin of a process started with `stdin 1` (a detached
 * one, typically): its I frames go to the process's stdin; `i` closes it, `D` ends the
 * request leaving it open. Either is answered with X 0. */
static void req_input(struct client *c, const char *id)
{
    struct proc *p = find_proc(id);
    char e[160];
    if (!p) {
        fmt(e, sizeof e, "torpor-init: no such process: %.64s", id);
        send_str(c, 'F', e); send_exit(c, 1);
    } else if (p->in < 0 || p->in_eof || p->done) {
        fmt(e, sizeof e, "torpor-init: the stdin of process %.64s is not open (closed, or it "
            "was started without stdin)", id);
        send_str(c, 'F', e); send_exit(c, 3);
    } else {
        c->state = ST_FEED;
        c->feed = p;
    }
}

/* `forget ID`: drop an exited process's files (its output) and its line in `ps`. */
static void req_forget(struct client *c, const char *id)
{
    struct proc *p = find_proc(id);
    char e[160];
    if (!p || p->forgotten) {
        fmt(e, sizeof e, "torpor-init: no such process: %.64s", id);
        send_str(c, 'F', e); send_exit(c, 1);
    } else if (!p->done || p->is_main) {
        fmt(e, sizeof e, "torpor-init: process %.64s is %s", id, p->done ? "the main process"
            : "still running");
        send_str(c, 'F', e); send_exit(c, 3);
    } else {
        char path[PATH_MAX];
        fmt(path, sizeof path, "%s/procs/%d", g_dir, p->id);
        rm_rf(path);
        p->forgotten = 1;
        send_exit(c, 0);
    }
}

/* A restore happened: bump the generation and run the hooks (clients in ST_RESTORE are
 * answered when they are done). token: the host's id for this restore (from the host
 * channel's token file), or NULL for a `restored` request. */
static void announce_restore(const char *token)
{
    char path[PATH_MAX], b[16];
    if (token) fmt(g_restore_token, sizeof g_restore_token, "%s", token);
    int len = fmt(b, sizeof b, "%d\n", ++g_gen);
    fmt(path, sizeof path, "%s/generation", g_dir);
    write_file(path, b, (size_t)len);
    if (g_hooks_active) g_hook_rerun = 1;
    else hooks_start();
}

static int host_listen(void)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (strlen(g_host_sock) >= sizeof sa.sun_path) { msg("socket path too long: %s", g_host_sock); return -1; }
    strcpy(sa.sun_path, g_host_sock);
    unlink(g_host_sock);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(fd, 64) < 0) {
        msg("listen on %s: %s", g_host_sock, strerror(errno));
        if (fd >= 0) close(fd);
        return -1;
    }
    chmod(g_host_sock, 0600);
    g_hfd = fd;
    return 0;
}

static void read_token(char *dst, size_t n)
{
    int fd = open(g_host_token, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    ssize_t r = fd >= 0 ? read(fd, dst, n - 1) : 0;
    if (fd >= 0) close(fd);
    dst[r > 0 ? r : 0] = 0;
}

static void host_close(void)
{
    if (g_hfd >= 0) close(g_hfd);
    g_hfd = -1;
    unlink(g_host_sock);
    read_token(g_prep_token, sizeof g_prep_token);
    g_prepared = 1;
}

/* While prepared: has the host written a new token? Only a whole line naming what
 * happened counts ("restored ID" or "resumed ID"); anything else (a file still being
 * written by a host that does not rename it into place) is read again next time. */
static void host_check_token(void)
{
    char t[sizeof g_prep_token];
    read_token(t, sizeof t);
    if (!strcmp(t, g_prep_token)) return;
    char *nl = strchr(t, '\n');
    if (!nl) return;
    *nl = 0;
    if (strncmp(t, "restored ", 9) && strncmp(t, "resumed ", 8)) return;
    g_prepared = 0;
    if (!strncmp(t, "restored ", 9)) {
        if (strcmp(t + 9, g_restore_token)) announce_restore(t + 9);
        g_relisten = 1;   /* after the hooks, so no call overtakes them */
    } else {
        host_listen();    /* "resumed": the checkpoint is done and we kept running */
    }
}

static void handle_request(struct client *c, char *payload, size_t n)
{
    if (!n || payload[n - 1]) { send_str(c, 'F', "torpor-init: malformed request"); send_exit(c, 2); return; }
    int ns = 0;
    char **s = xrealloc(NULL, sizeof(char *) * (n + 1));   /* at most one string per byte */
    for (size_t off = 0; off < n; off += strlen(payload + off) + 1) s[ns++] = payload + off;
    if (!strcmp(s[0], "ping")) {
        send_exit(c, 0);
    } else if (!strcmp(s[0], "ps")) {
        struct buf out = {0};
        for (int i = 0; i < g_nprocs; i++) {
            struct proc *p = g_procs[i];
            char b[64];
            if (p->forgotten) continue;
            if (p->done) fmt(b, sizeof b, "%d %d exited %d ", p->id, (int)p->pid, p->status);
            else fmt(b, sizeof b, "%d %d running - ", p->id, (int)p->pid);
            buf_add(&out, b, strlen(b));
            buf_add(&out, p->cmd, strlen(p->cmd));
            buf_add(&out, "\n", 1);
        }
        if (out.len) send_frame(c, 'O', out.p, out.len);
        buf_free(&out);
        send_exit(c, 0);
    } else if (!strcmp(s[0], "kill") && ns >= 2) {
        struct proc *p = find_proc(s[1]);
        int sig = parse_signal(ns >= 3 ? s[2] : "TERM");
        char e[128];
        if (!p) {
            fmt(e, sizeof e, "torpor-init: no such process: %.64s", s[1]);
            send_str(c, 'F', e); send_exit(c, 1);
        } else if (sig < 0) {
            fmt(e, sizeof e, "torpor-init: bad signal: %.64s", s[2]);
            send_str(c, 'F', e); send_exit(c, 2);
        } else {
            if (!p->done && kill(-p->pid, sig) < 0 && !p->reaped) kill(p->pid, sig);
            send_exit(c, 0);   /* signalling a finished process is a no-op */
        }
    } else if (!strcmp(s[0], "input") && ns >= 2) {
        req_input(c, s[1]);
    } else if (!strcmp(s[0], "forget") && ns >= 2) {
        req_forget(c, s[1]);
    } else if (!strcmp(s[0], "restored")) {
        c->state = ST_RESTORE;   /* answered once the hooks are done */
        announce_restore(NULL);
    } else if (!strcmp(s[0], "prepare")) {
        if (!c->host) {
            send_str(c, 'F', "torpor-init: prepare is for the host channel");
            send_exit(c, 2);
        } else {
            host_close();
            send_exit(c, 0);   /* closed once the X is flushed; the host waits for that */
            for (int i = 0; i < g_nclients; i++)
                if (g_clients[i] != c && g_clients[i]->host && g_clients[i]->fd >= 0)
                    client_gone(g_clients[i]);
        }
    } else if (!strcmp(s[0], "spawn")) {
        req_spawn(c, s, ns);
    } else {
        send_str(c, 'F', "torpor-init: unknown request");
        send_exit(c, 2);
    }
    free(s);
}

/* Client went away: the process it was attached to keeps running. */
static void client_gone(struct client *c)
{
    if (c->p) {
        c->p->cl = NULL;
        c->p->in_eof = 1;   /* flush what the client sent, then EOF */
        proc_write_stdin(c->p);
        c->p = NULL;
    }
    close(c->fd);
    c->fd = -1;
}

static void client_frame(struct client *c, char type, char *d, size_t n)
{
    if (c->state == ST_NEW) {
        if (type == 'R') handle_request(c, d, n);
        else client_gone(c);
        return;
    }
    if (c->state == ST_FEED) {
        struct proc *f = c->feed;
        if (type == 'I' && f->in >= 0 && !f->in_eof) { buf_add(&f->inbuf, d, n); proc_write_stdin(f); }
        else if (type == 'i' || type == 'D') {
            if (type == 'i') { f->in_eof = 1; proc_write_stdin(f); }
            c->feed = NULL;
            send_exit(c, 0);
        }
        return;
    }
    struct proc *p = c->p;
    if (c->state != ST_ATTACHED || !p) return;
    if (type == 'I' && p->in >= 0 && !p->in_eof) { buf_add(&p->inbuf, d, n); proc_write_stdin(p); }
    else if (type == 'i') { p->in_eof = 1; proc_write_stdin(p); }
    else if (type == 'K' && !p->done) {
        char b[16];
        fmt(b, sizeof b, "%.*s", (int)(n < 15 ? n : 15), d);
        int sig = parse_signal(b);
        if (sig > 0 && kill(-p->pid, sig) < 0 && !p->reaped) kill(p->pid, sig);
    }
}

static void client_read(struct client *c)
{
    char b[CHUNK];
    ssize_t n = read(c->fd, b, sizeof b);
    if (n < 0 && (errno == EINTR || errno == EAGAIN)) return;
    if (n <= 0) { client_gone(c); return; }
    buf_add(&c->in, b, (size_t)n);
    while (c->fd >= 0 && buf_size(&c->in) >= 5) {
        unsigned char *h = (unsigned char *)c->in.p + c->in.off;
        uint32_t len = get32(h + 1);
        if (len > MAX_FRAME) { client_gone(c); return; }
        if (buf_size(&c->in) < 5 + (size_t)len) break;
        c->in.off += 5 + len;
        client_frame(c, (char)h[0], (char *)h + 5, len);
    }
}

static void client_flush(struct client *c)
{
    while (c->fd >= 0 && buf_size(&c->out)) {
        ssize_t w = write(c->fd, c->out.p + c->out.off, buf_size(&c->out));
        if (w < 0) {
            if (errno == EINTR) continue;
            if (errno != EAGAIN) client_gone(c);   /* e.g. EPIPE: just detach */
            return;
        }
        c->out.off += (size_t)w;
    }
    if (c->fd >= 0 && c->state == ST_CLOSING && !buf_size(&c->out)) client_gone(c);
}

/* ------------------------------------------------------------------ */
/* PID 1: main loop                                                     */

static void reap(void)
{
    int st;
    pid_t pid;
    while ((pid = waitpid(-1, &st, WNOHANG)) > 0) {
        int code = wait_code(st);
        if (pid == g_hook_pid) { hook_reaped(code); continue; }
        for (int i = 0; i < g_nprocs; i++) {
            struct proc *p = g_procs[i];
            if (p->pid != pid || p->reaped) continue;
            p->reaped = 1;
            p->status = code;
            if (p == g_main && g_phase == 0) {
                /* Docker semantics: the main process decides the sandbox's fate. */
                g_exit_code = code;
                g_phase = 1;
                g_deadline = now_ms() + STOP_GRACE_MS;
                signal_all(SIGTERM, p);
            }
            proc_check_done(p);
            break;
        }
        /* anything else is a reparented orphan: reaping it is all we owe it */
    }
}

static int all_reaped(void)
{
    for (int i = 0; i < g_nprocs; i++)
        if (!g_procs[i]->reaped) return 0;
    return 1;
}

static void init_exit(void)
{
    /* Last drain: whatever is already in the pipes goes to the files. */
    for (int i = 0; i < g_nprocs; i++) {
        struct proc *p = g_procs[i];
        for (int k = 0; k < 1000 && (p->out >= 0 || p->err >= 0); k++) {
            struct pollfd q[2] = {{p->out, POLLIN, 0}, {p->err, POLLIN, 0}};
            if (poll(q, 2, 0) <= 0) break;
            if (q[0].revents) proc_read(p, 0);
            if (q[1].revents) proc_read(p, 1);
        }
        if (p->reaped && !p->done) { if (p->out >= 0) close(p->out); if (p->err >= 0) close(p->err); p->out = p->err = -1; proc_check_done(p); }
    }
    for (int i = 0; i < g_nclients; i++) client_flush(g_clients[i]);
    exit(g_exit_code);
}

enum { K_SIG, K_LISTEN, K_HLISTEN, K_CLIENT, K_OUT, K_ERR, K_IN };

static int run_init(int argc, char **argv)
{
    int cmd = 2;
    const char *main_user = NULL;   /* -u UID:GID: the main process's user (init stays root) */
    while (cmd < argc && strcmp(argv[cmd], "--")) {
        if (!strcmp(argv[cmd], "-u") && cmd + 1 < argc) main_user = argv[++cmd];
        else if (!strcmp(argv[cmd], "-H") && cmd + 1 < argc) {
            fmt(g_host_sock, sizeof g_host_sock, "%s/init.sock", argv[++cmd]);
            fmt(g_host_token, sizeof g_host_token, "%s/token", argv[cmd]);
        }
        cmd++;
    }
    cmd++;   /* first word of CMD, if any */

    char path[PATH_MAX];
    fmt(path, sizeof path, "%s/procs", g_dir);
    if (mkdir_p(g_dir, 0755) < 0) { msg("mkdir %s: %s", g_dir, strerror(errno)); return EXIT_CLIENT; }
    rm_rf(path);   /* a cold start begins with an empty process table */
    if (mkdir(path, 0755) < 0) { msg("mkdir %s: %s", path, strerror(errno)); return EXIT_CLIENT; }
    fmt(path, sizeof path, "%s/generation", g_dir);
    write_file(path, "0\n", 2);
    if (getpid() != 1) prctl(PR_SET_CHILD_SUBREAPER, 1);   /* outside a sandbox (tests) */

    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGCHLD); sigaddset(&mask, SIGTERM); sigaddset(&mask, SIGINT); sigaddset(&mask, SIGHUP);
    sigprocmask(SIG_BLOCK, &mask, NULL);
    int sfd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
    if (sfd < 0) { msg("signalfd: %s", strerror(errno)); return EXIT_CLIENT; }

    int lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (strlen(g_sock) >= sizeof sa.sun_path) { msg("socket path too long: %s", g_sock); return EXIT_CLIENT; }
    strcpy(sa.sun_path, g_sock);
    unlink(g_sock);
    if (lfd < 0 || bind(lfd, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(lfd, 64) < 0) {
        msg("listen on %s: %s", g_sock, strerror(errno));
        return EXIT_CLIENT;
    }
    chmod(g_sock, 0600);
    if (g_host_sock[0] && host_listen() < 0) return EXIT_CLIENT;

    if (cmd < argc) {
        char err[PATH_MAX + 256];
        g_console = 1;
        fcntl(1, F_SETFL, fcntl(1, F_GETFL) | O_NONBLOCK);
        fcntl(2, F_SETFL, fcntl(2, F_GETFL) | O_NONBLOCK);
        g_main = start_proc(argv + cmd, argc - cmd, NULL, 0, NULL, main_user, 0, 0, err, sizeof err);
        if (err[0]) msg("%s", err + 13);
        if (!g_main) return 126;
        g_main->is_main = 1;
    }

    struct pollfd *pfd = NULL;
    struct { int kind; void *ptr; } *tag = NULL;
    for (;;) {
        /* exit conditions */
        if (g_phase > 0 && all_reaped()) init_exit();
        if (g_terminating && !g_main && all_reaped()) init_exit();
        long long now = now_ms();
        if (g_phase == 1 && now >= g_deadline) {
            signal_all(SIGKILL, NULL);
            g_phase = 2;
            g_deadline = now + 1000;
        } else if (g_phase == 2 && now >= g_deadline) {
            init_exit();
        }
        if (g_hook_pid && now >= g_hook_deadline) {
            hook_log("torpor-init: %s timed out, killing it\n", g_hooks[g_hook_idx]);
            kill(-g_hook_pid, SIGKILL);
            g_hook_deadline = now + 3600000;   /* now just wait for it to be reaped */
        }

        /* build the poll set */
        int cap = 3 + g_nclients + 3 * g_nprocs, n = 0;
        pfd = xrealloc(pfd, sizeof(*pfd) * (size_t)cap);
        tag = xrealloc(tag, sizeof(*tag) * (size_t)cap);
#define ADD(fd_, ev_, kind_, ptr_) \
    (pfd[n] = (struct pollfd){(fd_), (short)(ev_), 0}, tag[n].kind = (kind_), tag[n].ptr = (ptr_), n++)
        ADD(sfd, POLLIN, K_SIG, NULL);
        if (!g_terminating && !g_phase) ADD(lfd, POLLIN, K_LISTEN, NULL);
        if (g_relisten && !g_hooks_active) { g_relisten = 0; host_listen(); }
        if (!g_terminating && !g_phase && g_hfd >= 0) ADD(g_hfd, POLLIN, K_HLISTEN, NULL);
        for (int i = 0; i < g_nclients; i++) {
            struct client *c = g_clients[i];
            int ev = buf_size(&c->out) ? POLLOUT : 0;
            struct proc *w = c->p ? c->p : c->feed;   /* whose stdin it writes */
            if (!(w && buf_size(&w->inbuf) > HIGH_WATER)) ev |= POLLIN;
            ADD(c->fd, ev, K_CLIENT, c);
        }
        for (int i = 0; i < g_nprocs; i++) {
            struct proc *p = g_procs[i];
            int slow = p->cl && buf_size(&p->cl->out) > HIGH_WATER;   /* backpressure */
            if (p->out >= 0 && !slow) ADD(p->out, POLLIN, K_OUT, p);
            if (p->err >= 0 && !slow) ADD(p->err, POLLIN, K_ERR, p);
            if (p->in >= 0 && buf_size(&p->inbuf)) ADD(p->in, POLLOUT, K_IN, p);
        }
        int timeout = -1;
        if (g_phase) timeout = (int)(g_deadline > now ? g_deadline - now : 0);
        if (g_hook_pid) {
            long long t = g_hook_deadline > now ? g_hook_deadline - now : 0;
            if (timeout < 0 || t < timeout) timeout = (int)t;
        }
        if (g_prepared && (timeout < 0 || timeout > PREPARED_POLL_MS)) timeout = PREPARED_POLL_MS;
        int r = poll(pfd, (nfds_t)n, timeout);
        if (r < 0 && errno != EINTR) { msg("poll: %s", strerror(errno)); sleep(1); }

        for (int i = 0; r > 0 && i < n; i++) {
            short re = pfd[i].revents;
            if (!re) continue;
            struct proc *p = tag[i].ptr;
            struct client *c = tag[i].ptr;
            switch (tag[i].kind) {
            case K_SIG: {
                struct signalfd_siginfo si;
                while (read(sfd, &si, sizeof si) == (ssize_t)sizeof si) {
                    if (si.ssi_signo == SIGTERM || si.ssi_signo == SIGINT) {
                        g_terminating = 1;
                        signal_all(SIGTERM, NULL);
                    }
                }
                break;
            }
            case K_LISTEN:
            case K_HLISTEN: {
                if (tag[i].kind == K_HLISTEN && g_hfd < 0) break;   /* closed meanwhile */
                int fd = accept4(tag[i].kind == K_HLISTEN ? g_hfd : lfd, NULL, NULL,
                                 SOCK_CLOEXEC | SOCK_NONBLOCK);
                if (fd < 0) break;
                c = xrealloc(NULL, sizeof *c);
                memset(c, 0, sizeof *c);
                c->fd = fd;
                c->host = tag[i].kind == K_HLISTEN;
                g_clients = xrealloc(g_clients, sizeof(*g_clients) * (size_t)(g_nclients + 1));
                g_clients[g_nclients++] = c;
                break;
            }
            case K_CLIENT:
                if (c->fd >= 0 && (re & (POLLIN | POLLHUP | POLLERR))) client_read(c);
                if (c->fd >= 0 && (re & POLLOUT)) client_flush(c);
                break;
            case K_OUT: if (p->out >= 0) proc_read(p, 0); break;
            case K_ERR: if (p->err >= 0) proc_read(p, 1); break;
            case K_IN: proc_write_stdin(p); break;
            }
        }
        reap();   /* cheap; also catches SIGCHLDs coalesced with the read above */
        if (g_prepared) host_check_token();

        /* flush new output eagerly, then sweep closed clients */
        int j = 0;
        for (int i = 0; i < g_nclients; i++) {
            struct client *c = g_clients[i];
            client_flush(c);
            if (c->fd < 0) {
                buf_free(&c->in); buf_free(&c->out); free(c);
            } else {
                g_clients[j++] = c;
            }
        }
        g_nclients = j;
    }
}

/* ------------------------------------------------------------------ */
/* Clients                                                              */

static int connect_init(int wait_ms)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    fmt(sa.sun_path, sizeof sa.sun_path, "%s", g_sock);
    long long until = now_ms() + wait_ms;
    useconds_t pause = 500;   /* just after a restore the socket is a few ms away */
    for (;;) {
        struct stat st;
        int fd = -1, e = ENOTSOCK;
        /* Through the host channel the socket lives in a directory the sandbox can write:
         * connect only to a socket, never through a symlink it may have planted. */
        if (!g_remote || (lstat(g_sock, &st) == 0 && S_ISSOCK(st.st_mode))) {
            fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
            if (fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0) return fd;
            e = errno;
        } else if (g_remote && lstat(g_sock, &st) < 0) {
            e = errno;
        }
        if (fd >= 0) close(fd);
        if (g_alive > 0 && kill(g_alive, 0) < 0 && errno == ESRCH) {
            msg("cannot connect to init: the sandbox is not running");
            exit(EXIT_CLIENT);
        }
        if (now_ms() >= until) {
            msg("cannot connect to init at %s: %s", g_sock, strerror(e));
            exit(EXIT_CLIENT);
        }
        usleep(pause);
        if (pause < 20000) pause *= 2;
    }
}

/*
 * Send one request and follow the reply until X. With fwd_stdin, our stdin
 * is forwarded as I/i frames; with fwd_signals, INT/TERM/HUP/QUIT become K
 * frames. The socket is non-blocking and we always keep reading it, so a
 * child that is slow to read its stdin cannot deadlock us against init.
 */
/* `exec -t SECONDS`: after that long the client sends the process SIGTERM, after 5 s more
 * SIGKILL, and exits 124 (as timeout(1) does) once the process is gone. Enforced here,
 * inside the sandbox, so the host never has to abandon a client that holds its pipes. */
static long long g_client_timeout_ms;
static int g_wait_eof;
static int g_keep_stdin;   /* `input` without -c: end with D (stdin stays open), not i */
#define KILL_GRACE_MS 5000

static int run_client(const char *req, size_t reqlen, int fwd_stdin, int fwd_signals, int detach)
{
    long long deadline = g_client_timeout_ms > 0 ? now_ms() + g_client_timeout_ms : -1;
    int timeout_phase = 0;   /* 1: TERM sent, 2: KILL sent */
    int fd = g_prefd >= 0 ? g_prefd : connect_init(0);
    g_prefd = -1;
    struct buf out = {0}, in = {0};
    buf_frame(&out, 'R', req, reqlen);
    fcntl(fd, F_SETFL, O_NONBLOCK);
    int sfd = -1, stdin_open = fwd_stdin;
    if (fwd_signals) {
        sigset_t m;
        sigemptyset(&m);
        sigaddset(&m, SIGINT); sigaddset(&m, SIGTERM); sigaddset(&m, SIGHUP); sigaddset(&m, SIGQUIT);
        sigprocmask(SIG_BLOCK, &m, NULL);
        sfd = signalfd(-1, &m, SFD_CLOEXEC);
    }
    char id[32] = "", b[CHUNK];
    for (;;) {
        struct pollfd q[3] = {{fd, POLLIN | (buf_size(&out) ? POLLOUT : 0), 0},
                              {stdin_open && !buf_size(&out) ? 0 : -1, POLLIN, 0},
                              {sfd, POLLIN, 0}};
        int wait = -1;
        if (deadline >= 0) {
            long long left = deadline - now_ms();
            wait = left > 0 ? (int)left : 0;
        }
        if (poll(q, 3, wait) < 0) { if (errno == EINTR) continue; msg("poll: %s", strerror(errno)); return EXIT_CLIENT; }
        if (deadline >= 0 && now_ms() >= deadline) {
            int sig = timeout_phase == 0 ? SIGTERM : SIGKILL;
            if (timeout_phase == 0)
                msg("timed out after %.1f s: sending SIGTERM", g_client_timeout_ms / 1000.0);
            int l = fmt(b, sizeof b, "%d", sig);
            buf_frame(&out, 'K', b, (size_t)l);
            timeout_phase++;
            deadline = timeout_phase == 1 ? now_ms() + KILL_GRACE_MS : -1;
        }
        if (q[2].revents) {
            struct signalfd_siginfo si;
            if (read(sfd, &si, sizeof si) == (ssize_t)sizeof si) {
                int l = fmt(b, sizeof b, "%u", si.ssi_signo);
                buf_frame(&out, 'K', b, (size_t)l);
            }
        }
        if (q[1].revents) {
            ssize_t r = read(0, b, sizeof b);
            if (r > 0) buf_frame(&out, 'I', b, (size_t)r);
            else if (r == 0 || (errno != EINTR && errno != EAGAIN)) {
                buf_frame(&out, g_keep_stdin ? 'D' : 'i', "", 0);
                stdin_open = 0;
            }
        }
        while (buf_size(&out)) {
            ssize_t w = write(fd, out.p + out.off, buf_size(&out));
            if (w < 0) {
                if (errno == EINTR) continue;
                if (errno == EAGAIN) break;
                buf_free(&out);   /* init went away; the read side reports it */
                stdin_open = 0;
                break;
            }
            out.off += (size_t)w;
        }
        if (!(q[0].revents & (POLLIN | POLLHUP | POLLERR))) continue;
        ssize_t r = read(fd, b, sizeof b);
        if (r < 0 && (errno == EINTR || errno == EAGAIN)) continue;
        if (r <= 0) { msg("lost connection to init"); return EXIT_CLIENT; }
        buf_add(&in, b, (size_t)r);
        while (buf_size(&in) >= 5) {
            unsigned char *h = (unsigned char *)in.p + in.off;
            size_t len = get32(h + 1);
            if (buf_size(&in) < 5 + len) break;
            in.off += 5 + len;
            char *d = (char *)h + 5;
            switch (h[0]) {
            case 'O': if (write_all(1, d, len) < 0) return 128 + SIGPIPE; break;
            case 'E': write_all(2, d, len); break;
            case 'F': write_all(2, d, len); write_all(2, "\n", 1); break;
            case 'P': fmt(id, sizeof id, "%.*s", (int)(len < 31 ? len : 31), d); break;
            case 'X': {
                char s[16];
                fmt(s, sizeof s, "%.*s", (int)(len < 15 ? len : 15), d);
                int code = atoi(s);
                if (detach && code == 0) { write_all(1, id, strlen(id)); write_all(1, "\n", 1); }
                if (g_wait_eof) {   /* prepare: return once init has closed its end */
                    struct pollfd e = {fd, POLLIN, 0};
                    while (poll(&e, 1, 5000) > 0 && read(fd, b, sizeof b) > 0) { }
                }
                return timeout_phase ? 124 : code;
            }
            }
        }
    }
}

/* On the host (--connect), roles that work on the sandbox's files run inside the
 * sandbox as children of init (this same binary at SELF_PATH), their output streamed
 * back and not kept in files. */
static int remote_role(int argc, char **argv, int fwd_stdin)
{
    struct buf req = {0};
    buf_add(&req, "spawn", 6);
    buf_add(&req, "detach", 7); buf_add(&req, "0", 2);
    buf_add(&req, "stdin", 6); buf_add(&req, fwd_stdin ? "1" : "0", 2);
    buf_add(&req, "nofile", 7); buf_add(&req, "1", 2);
    buf_add(&req, "--", 3);
    buf_add(&req, SELF_PATH, sizeof SELF_PATH);
    for (int i = 1; i < argc; i++) buf_add(&req, argv[i], strlen(argv[i]) + 1);
    return run_client(req.p, req.len, fwd_stdin, 1, 0);
}

static int usage(void)
{
    msg("usage: init {init [-- CMD...] | exec [-d] [-i] [-t SECS] [-w DIR] [-e K=V]... [-u UID[:GID]] -- CMD... |"
        " ps | kill ID [SIG] | input [-c] ID | forget ID | logs [-f] ID | get PATH | put DIR | stat [-l [-L]] PATH |"
        " ls [-d DEPTH] DIR | mkdir [-p] [-m MODE] PATH | rm [-r] PATH | mv SRC DST | restored | ping}");
    return 2;
}

static int cmd_exec(int argc, char **argv)
{
    int detach = 0, fwd = 0, i = 2;
    struct buf req = {0}, opts = {0};
    for (; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--")) { i++; break; }
        if (!strcmp(a, "-d")) detach = 1;
        else if (!strcmp(a, "-i")) fwd = 1;
        else if (!strcmp(a, "-t") && i + 1 < argc) g_client_timeout_ms = (long long)(atof(argv[++i]) * 1000);
        else if ((!strcmp(a, "-w") || !strcmp(a, "-e") || !strcmp(a, "-u")) && i + 1 < argc) {
            const char *k = a[1] == 'w' ? "cwd" : a[1] == 'e' ? "env" : "user";
            buf_add(&opts, k, strlen(k) + 1);
            buf_add(&opts, argv[i + 1], strlen(argv[i + 1]) + 1);
            i++;
        } else if (a[0] == '-') return usage();
        else break;   /* CMD without a preceding -- */
    }
    if (i >= argc) return usage();
    buf_add(&req, "spawn", 6);
    buf_add(&req, "detach", 7); buf_add(&req, detach ? "1" : "0", 2);
    buf_add(&req, "stdin", 6); buf_add(&req, fwd ? "1" : "0", 2);
    if (opts.len) buf_add(&req, opts.p, opts.len);
    buf_add(&req, "--", 3);
    for (; i < argc; i++) buf_add(&req, argv[i], strlen(argv[i]) + 1);
    return run_client(req.p, req.len, fwd && !detach, !detach, detach);
}

/* Copy new bytes of fd to out (logs); whether there were any. */
static int copy_new(int fd, int out)
{
    char b[CHUNK];
    ssize_t n;
    int any = 0;
    while (fd >= 0 && ((n = read(fd, b, sizeof b)) > 0 || (n < 0 && errno == EINTR)))
        if (n > 0) {
            any = 1;
            if (write_all(out, b, (size_t)n) < 0) exit(128 + SIGPIPE);
        }
    return any;
}

static int cmd_logs(int argc, char **argv)
{
    int follow = 0, i = 2;
    if (i < argc && !strcmp(argv[i], "-f")) { follow = 1; i++; }
    if (i + 1 != argc) return usage();
    char dir[PATH_MAX], p[PATH_MAX + 16];
    struct stat st;
    fmt(dir, sizeof dir, "%s/procs/%s", g_dir, argv[i]);
    if (strchr(argv[i], '/') || stat(dir, &st) < 0) { msg("no such process: %s", argv[i]); return 1; }
    fmt(p, sizeof p, "%s/stdout", dir);
    int fo = open(p, O_RDONLY | O_CLOEXEC);
    fmt(p, sizeof p, "%s/stderr", dir);
    int fe = open(p, O_RDONLY | O_CLOEXEC);
    fmt(p, sizeof p, "%s/exit", dir);
    useconds_t pause = 1000;   /* -f: look again soon after new output, then less often */
    for (;;) {
        /* check exit first: once it exists, all output is already in the files. Its
         * directory gone means another client forgot the process (only an exited one
         * can be), exit file included: its output is all in the files held open here.
         * Without this check such a follower waited for the exit file forever. */
        int exited = access(p, F_OK) == 0 || access(dir, F_OK) < 0;
        if (copy_new(fo, 1) + copy_new(fe, 2)) pause = 1000;
        else if (pause < 50000) pause *= 2;
        if (!follow || exited) return 0;
        usleep(pause);
    }
}

/* --- archive stream (get / put) --- */

static void arc_header(char type, uint32_t mode, uint64_t size, const char *path)
{
    unsigned char h[17];
    size_t plen = strlen(path);
    h[0] = (unsigned char)type;
    put32(h + 1, mode);
    put64(h + 5, size);
    put32(h + 13, (uint32_t)plen);
    if (write_all(1, h, sizeof h) < 0 || write_all(1, path, plen) < 0) { msg("get: write: %s", strerror(errno)); exit(1); }
}

static int get_entry(const char *fs, const char *name)
{
    struct stat st;
    int rc = 0;
    if (lstat(fs, &st) < 0) { msg("get: %s: %s", fs, strerror(errno)); return 1; }
    if (S_ISDIR(st.st_mode)) {
        DIR *d = opendir(fs);
        if (!d) { msg("get: %s: %s", fs, strerror(errno)); return 1; }
        arc_header('d', st.st_mode & 07777, 0, name);
        char **names = NULL;
        int n = 0;
        struct dirent *e;
        while ((e = readdir(d))) {
            if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
            names = xrealloc(names, sizeof(char *) * (size_t)(n + 1));
            names[n++] = xstrdup(e->d_name);
        }
        closedir(d);
        qsort(names, (size_t)n, sizeof(char *), cmp_str);
        for (int i = 0; i < n; i++) {
            char cfs[PATH_MAX], cname[PATH_MAX];
            fmt(cfs, sizeof cfs, "%s/%s", fs, names[i]);
            if (!strcmp(name, ".")) fmt(cname, sizeof cname, "%s", names[i]);
            else fmt(cname, sizeof cname, "%s/%s", name, names[i]);
            rc |= get_entry(cfs, cname);
            free(names[i]);
        }
        free(names);
    } else if (S_ISREG(st.st_mode)) {
        int fd = open(fs, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
        if (fd < 0) { msg("get: %s: %s", fs, strerror(errno)); return 1; }
        uint64_t left = (uint64_t)st.st_size;
        arc_header('f', st.st_mode & 07777, left, name);
        char b[CHUNK];
        while (left) {
            ssize_t r = read(fd, b, left < sizeof b ? left : sizeof b);
            if (r < 0 && errno == EINTR) continue;
            if (r <= 0) {   /* file shrank (or read error): pad to the promised size */
                msg("get: %s changed while reading", fs);
                memset(b, 0, sizeof b);
                r = (ssize_t)(left < sizeof b ? left : sizeof b);
                rc = 1;
            }
            if (write_all(1, b, (size_t)r) < 0) { msg("get: write: %s", strerror(errno)); exit(1); }
            left -= (uint64_t)r;
        }
        close(fd);
    } else if (S_ISLNK(st.st_mode)) {
        char t[PATH_MAX];
        ssize_t n = readlink(fs, t, sizeof t - 1);
        if (n < 0) { msg("get: %s: %s", fs, strerror(errno)); return 1; }
        t[n] = 0;
        arc_header('l', 0777, (uint64_t)n, name);
        if (write_all(1, t, (size_t)n) < 0) exit(1);
    } else {
        msg("get: skipping %s (not a file, directory or symlink)", fs);
    }
    return rc;
}

static int cmd_get(int argc, char **argv)
{
    if (argc != 3) return usage();
    char path[PATH_MAX];
    fmt(path, sizeof path, "%s", argv[2]);
    size_t l = strlen(path);
    while (l > 1 && path[l - 1] == '/') path[--l] = 0;
    const char *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    if (!*base || !strcmp(base, ".") || !strcmp(base, "..")) base = ".";
    struct stat st;
    if (lstat(path, &st) < 0) { msg("get: %s: %s", path, strerror(errno)); return 1; }
    int rc = get_entry(path, base);
    arc_header('Z', 0, 0, "");
    return rc;
}

static void put_fail(const char *f, const char *arg)
{
    char b[PATH_MAX + 128];
    fmt(b, sizeof b, f, arg);
    msg("put: %s", b);
    exit(1);
}

/* Copy exactly n bytes from stdin to fd (fd < 0: discard). */
static void put_copy(int fd, uint64_t n)
{
    char b[CHUNK];
    while (n) {
        ssize_t r = read_full(0, b, n < sizeof b ? n : sizeof b);
        if (r <= 0) put_fail("truncated archive%s", "");
        if (fd >= 0 && write_all(fd, b, (size_t)r) < 0) put_fail("write: %s", strerror(errno));
        n -= (uint64_t)r;
    }
}

static int cmd_put(int argc, char **argv)
{
    if (argc != 3) return usage();
    const char *root = argv[2];
    if (mkdir_p(root, 0755) < 0) put_fail("mkdir %s failed", root);
    struct { char *path; mode_t mode; } *dirs = NULL;
    int ndirs = 0;
    for (;;) {
        unsigned char h[17];
        if (read_full(0, h, sizeof h) != (ssize_t)sizeof h) put_fail("truncated archive%s", "");
        char type = (char)h[0];
        mode_t mode = get32(h + 1) & 07777;
        uint64_t size = get64(h + 5);
        uint32_t plen = get32(h + 13);
        if (type == 'Z') break;
        if (plen >= PATH_MAX) put_fail("path too long%s", "");
        char raw[PATH_MAX], rel[PATH_MAX] = "";
        if (read_full(0, raw, plen) != (ssize_t)plen) put_fail("truncated archive%s", "");
        raw[plen] = 0;
        if (memchr(raw, 0, plen)) put_fail("bad path in archive%s", "");
        if (raw[0] == '/') put_fail("refusing absolute path %s", raw);
        /* normalise: drop "." and empty components, refuse "..", and make sure
         * no existing component below root is a symlink or non-directory */
        char tmp[PATH_MAX], full[PATH_MAX * 2];
        fmt(tmp, sizeof tmp, "%s", raw);
        char *save, *comp = strtok_r(tmp, "/", &save);
        while (comp) {
            char *next = strtok_r(NULL, "/", &save);
            if (!strcmp(comp, "..")) put_fail("refusing path with '..': %s", raw);
            if (strcmp(comp, ".")) {
                if (rel[0]) strcat(rel, "/");
                strcat(rel, comp);
                if (next) {   /* an intermediate directory */
                    struct stat st;
                    fmt(full, sizeof full, "%s/%s", root, rel);
                    if (lstat(full, &st) < 0) {
                        if (mkdir(full, 0755) < 0) put_fail("mkdir %s failed", full);
                    } else if (!S_ISDIR(st.st_mode)) {
                        put_fail("refusing to write through non-directory %s", full);
                    }
                }
            }
            comp = next;
        }
        if (!rel[0] && type != 'd') put_fail("bad path in archive: %s", raw);
        fmt(full, sizeof full, "%s/%s", root, rel[0] ? rel : ".");
        struct stat st;
        int exists = lstat(full, &st) == 0;
        if (type == 'd') {
            if (exists && !S_ISDIR(st.st_mode)) { unlink(full); exists = 0; }
            if (!exists && mkdir(full, 0700) < 0) put_fail("mkdir %s failed", full);
            put_copy(-1, size);
            if (rel[0]) {   /* modes are applied at the end, so read-only dirs can be filled */
                dirs = xrealloc(dirs, sizeof(*dirs) * (size_t)(ndirs + 1));
                dirs[ndirs].path = xstrdup(full);
                dirs[ndirs++].mode = mode;
            }
        } else if (type == 'f' || type == 'l') {
            if (exists && S_ISDIR(st.st_mode)) put_fail("refusing to replace directory %s", full);
            if (exists) unlink(full);
            if (type == 'f') {
                int fd = open(full, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
                if (fd < 0) put_fail("create %s failed", full);
                put_copy(fd, size);
                if (fchmod(fd, mode) < 0) msg("put: chmod %s: %s", full, strerror(errno));
                close(fd);
            } else {
                char t[PATH_MAX];
                if (size >= sizeof t) put_fail("symlink target too long%s", "");
                if (read_full(0, t, size) != (ssize_t)size) put_fail("truncated archive%s", "");
                t[size] = 0;
                if (symlink(t, full) < 0) put_fail("symlink %s failed", full);
            }
        } else {
            put_fail("unknown record type in archive%s", "");
        }
    }
    for (int i = ndirs - 1; i >= 0; i--) {
        if (chmod(dirs[i].path, dirs[i].mode) < 0) msg("put: chmod %s: %s", dirs[i].path, strerror(errno));
        free(dirs[i].path);
    }
    free(dirs);
    return 0;
}

/* `supervise EXITFILE -- CMD...` runs on the HOST, not in a sandbox: it is what torpor
 * starts runsc under. It runs CMD (a foreground `runsc run|restore`) as its child, writes
 * CMD's exit status to EXITFILE when CMD exits, and as
 * a child subreaper reaps every process CMD leaves behind before exiting itself. Without
 * it, runsc's gofer is orphaned to the host's PID 1 when a restored sandbox stops, and
 * `runsc delete` waits (seen here: 1-2 s) until that PID 1 gets round to reaping it. */
static int cmd_supervise(int argc, char **argv)
{
    if (argc < 5 || strcmp(argv[3], "--")) return usage();
    prctl(PR_SET_CHILD_SUBREAPER, 1);
    pid_t child = fork();
    if (child < 0) { msg("supervise: fork: %s", strerror(errno)); return 125; }
    if (child == 0) {
        execvp(argv[4], argv + 4);
        msg("supervise: exec %s: %s", argv[4], strerror(errno));
        _exit(127);
    }
    int code = 125, status;
    for (;;) {
        pid_t w = waitpid(-1, &status, 0);
        if (w < 0) {
            if (errno == EINTR) continue;
            break;   /* ECHILD: nothing left to reap */
        }
        if (w != child) continue;
        code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
        char b[16];
        int n = fmt(b, sizeof b, "%d\n", code);
        if (write_file(argv[2], b, (size_t)n) < 0)   /* atomic: temp file + rename */
            msg("supervise: writing %s: %s", argv[2], strerror(errno));
    }
    return code;
}

/* --- file operations (stat, ls, mkdir, rm, mv) --- */

/* The exit status of a failed file operation says what went wrong, so that the host can
 * tell a missing path from a refusal without reading the message: */
#define EXIT_NOENT 3     /* no such file or directory */
#define EXIT_NOTDIR 4    /* a path component (or the path itself) is not a directory */
#define EXIT_EXIST 5     /* it exists already */
#define EXIT_NOTEMPTY 6  /* the directory is not empty */
#define EXIT_ISDIR 7     /* it is a directory */
#define EXIT_ACCES 8     /* permission denied */

static int fail_errno(const char *verb, const char *path, int e)
{
    msg("%s: %s: %s", verb, path, strerror(e));
    switch (e) {
    case ENOENT: return EXIT_NOENT;
    case ENOTDIR: return EXIT_NOTDIR;
    case EEXIST: return EXIT_EXIST;
    case ENOTEMPTY: return EXIT_NOTEMPTY;
    case EISDIR: return EXIT_ISDIR;
    case EACCES: case EPERM: return EXIT_ACCES;
    default: return 1;
    }
}

/* One entry, as `stat -l` and `ls` print it:
 * "TYPE MODE UID GID SIZE MTIME\0PATH\0TARGET\0" with TYPE f, d, l or o (other), MODE
 * the permission bits in octal, MTIME seconds.nanoseconds, TARGET a symlink's target
 * (empty for anything else). Names may hold any byte but NUL, hence the NULs. */
static int print_entry(const struct stat *st, const char *shown, const char *fs)
{
    char t[PATH_MAX] = "";
    if (S_ISLNK(st->st_mode)) {
        ssize_t n = readlink(fs, t, sizeof t - 1);
        t[n > 0 ? n : 0] = 0;
    }
    char type = S_ISREG(st->st_mode) ? 'f' : S_ISDIR(st->st_mode) ? 'd' : S_ISLNK(st->st_mode) ? 'l' : 'o';
    char h[160];
    int n = fmt(h, sizeof h, "%c %o %u %u %llu %lld.%09ld", type, (unsigned)(st->st_mode & 07777),
                (unsigned)st->st_uid, (unsigned)st->st_gid, (unsigned long long)st->st_size,
                (long long)st->st_mtim.tv_sec, (long)st->st_mtim.tv_nsec);
    if (write_all(1, h, (size_t)n + 1) < 0 || write_all(1, shown, strlen(shown) + 1) < 0 ||
        write_all(1, t, strlen(t) + 1) < 0) { msg("write: %s", strerror(errno)); exit(1); }
    return 0;
}

/* `stat PATH`: print the kind of PATH (following symlinks) as one letter: d directory,
 * f regular file, o anything else. Exit 1 if it does not exist. Used by the host to give
 * `cp` Docker's semantics (copy into an existing directory, else create/rename).
 * `stat -l [-L] PATH`: print PATH's entry (see print_entry) without following a final
 * symlink; with -L, the entry of what PATH leads to, under its real path. */
static int cmd_stat(int argc, char **argv)
{
    int lng = 0, follow = 0, i = 2;
    for (; i < argc - 1 && argv[i][0] == '-'; i++) {
        if (!strcmp(argv[i], "-l")) lng = 1;
        else if (!strcmp(argv[i], "-L")) follow = 1;
        else return usage();
    }
    if (i != argc - 1 || (follow && !lng)) return usage();
    const char *path = argv[i];
    struct stat st;
    if (!lng) {
        if (stat(path, &st) < 0) { msg("stat: %s: %s", path, strerror(errno)); return 1; }
        const char *k = S_ISDIR(st.st_mode) ? "d\n" : S_ISREG(st.st_mode) ? "f\n" : "o\n";
        return write_all(1, k, 2) < 0;
    }
    if (!follow) {
        if (lstat(path, &st) < 0) return fail_errno("stat", path, errno);
        return print_entry(&st, path, path);
    }
    char real[PATH_MAX];
    if (!realpath(path, real)) return fail_errno("stat", path, errno);
    if (lstat(real, &st) < 0) return fail_errno("stat", path, errno);
    return print_entry(&st, real, real);
}

/* List dir's entries (sorted by name) down to depth levels, as "rel/name". Entries are
 * not followed (a symlink to a directory is listed, not entered). What cannot be read
 * below the top is skipped with a message (an entry deleted meanwhile, silently). */
static void ls_dir(const char *dir, const char *rel, int depth)
{
    DIR *d = opendir(dir);
    if (!d) { msg("ls: skipping %s: %s", dir, strerror(errno)); return; }
    char **names = NULL;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        names = xrealloc(names, sizeof(char *) * (size_t)(n + 1));
        names[n++] = xstrdup(e->d_name);
    }
    closedir(d);
    qsort(names, (size_t)n, sizeof(char *), cmp_str);
    for (int i = 0; i < n; i++) {
        char fs[PATH_MAX], shown[PATH_MAX];
        struct stat st;
        fmt(fs, sizeof fs, "%s/%s", dir, names[i]);
        fmt(shown, sizeof shown, "%s%s%s", rel, *rel ? "/" : "", names[i]);
        if (lstat(fs, &st) == 0) {
            print_entry(&st, shown, fs);
            if (S_ISDIR(st.st_mode) && depth > 1) ls_dir(fs, shown, depth - 1);
        } else if (errno != ENOENT) {
            msg("ls: skipping %s: %s", fs, strerror(errno));
        }
        free(names[i]);
    }
    free(names);
}

/* `ls [-d DEPTH] DIR`: print DIR's entries (see print_entry; PATH relative to DIR) down
 * to DEPTH levels (default 1). DIR itself is followed if it is a symlink. */
static int cmd_ls(int argc, char **argv)
{
    int depth = 1, i = 2;
    if (i + 1 < argc && !strcmp(argv[i], "-d")) { depth = atoi(argv[i + 1]); i += 2; }
    if (i != argc - 1 || depth < 1) return usage();
    struct stat st;
    if (stat(argv[i], &st) < 0) return fail_errno("ls", argv[i], errno);
    if (!S_ISDIR(st.st_mode)) return fail_errno("ls", argv[i], ENOTDIR);
    DIR *d = opendir(argv[i]);   /* the top must be readable: that is an error */
    if (!d) return fail_errno("ls", argv[i], errno);
    closedir(d);
    ls_dir(argv[i], "", depth);
    return 0;
}

/* `mkdir [-p] [-m MODE] PATH`: create a directory (mode in octal, default 755), with -p
 * its missing parents too (755). Prints 1 if it was created, 0 if (with -p) it was
 * already there. */
static int cmd_mkdir(int argc, char **argv)
{
    int parents = 0, i = 2;
    mode_t mode = 0755;
    for (; i < argc - 1 && argv[i][0] == '-'; i++) {
        if (!strcmp(argv[i], "-p")) parents = 1;
        else if (!strcmp(argv[i], "-m") && i + 2 < argc) mode = (mode_t)strtol(argv[++i], NULL, 8) & 07777;
        else return usage();
    }
    if (i != argc - 1) return usage();
    const char *path = argv[i];
    struct stat st;
    if (parents && stat(path, &st) == 0) {
        if (!S_ISDIR(st.st_mode)) return fail_errno("mkdir", path, EEXIST);
        return write_all(1, "0\n", 2) < 0;
    }
    if (parents) {   /* the parents (a trailing slash is no extra component) */
        char parent[PATH_MAX];
        fmt(parent, sizeof parent, "%s", path);
        size_t l = strlen(parent);
        while (l > 1 && parent[l - 1] == '/') parent[--l] = 0;
        char *slash = strrchr(parent, '/');
        if (slash && slash != parent) {
            *slash = 0;
            if (mkdir_p(parent, 0755) < 0) return fail_errno("mkdir", parent, errno);
        }
    }
    if (mkdir(path, 0700) < 0) return fail_errno("mkdir", path, errno);
    if (chmod(path, mode) < 0) msg("mkdir: chmod %s: %s", path, strerror(errno));
    return write_all(1, "1\n", 2) < 0;
}

/* Remove path and, if it is a directory, everything under it (links are removed, never
 * followed). 0 or an errno. */
static int remove_tree(const char *path)
{
    struct stat st;
    if (lstat(path, &st) < 0) return errno;
    if (!S_ISDIR(st.st_mode)) return unlink(path) < 0 ? errno : 0;
    DIR *d = opendir(path);
    if (!d) return errno;
    int err = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        char c[PATH_MAX];
        fmt(c, sizeof c, "%s/%s", path, e->d_name);
        int r = remove_tree(c);
        if (r && !err) { err = r; msg("rm: %s: %s", c, strerror(r)); }
    }
    closedir(d);
    if (rmdir(path) < 0 && !err) err = errno;
    return err;
}

/* `rm [-r] PATH`: remove a file, a symlink or an empty directory; with -r a directory and
 * everything in it. `/` is refused. */
static int cmd_rm(int argc, char **argv)
{
    int recursive = argc == 4 && !strcmp(argv[2], "-r");
    if (argc != 3 + recursive) return usage();
    const char *path = argv[argc - 1];
    char real[PATH_MAX];
    if (realpath(path, real) && !strcmp(real, "/")) { msg("rm: refusing to remove /"); return 1; }
    struct stat st;
    if (lstat(path, &st) < 0) return fail_errno("rm", path, errno);
    if (S_ISDIR(st.st_mode)) {
        if (recursive) {
            int e = remove_tree(path);
            return e ? fail_errno("rm", path, e) : 0;
        }
        return rmdir(path) < 0 ? fail_errno("rm", path, errno) : 0;
    }
    return unlink(path) < 0 ? fail_errno("rm", path, errno) : 0;
}

/* `mv SRC DST`: rename SRC to DST (rename(2): DST is replaced if it is a file, or an
 * empty directory when SRC is one; both on the same filesystem). */
static int cmd_mv(int argc, char **argv)
{
    if (argc != 4) return usage();
    if (rename(argv[2], argv[3]) < 0) {
        int e = errno;
        struct stat st;
        return fail_errno("mv", lstat(argv[2], &st) < 0 ? argv[2] : argv[3], e);
    }
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 2) return usage();
    const char *d = getenv("TORPOR_INIT_DIR");
    fmt(g_dir, sizeof g_dir, "%s", d && *d ? d : DEFAULT_DIR);
    fmt(g_sock, sizeof g_sock, "%s/ctl.sock", g_dir);
    signal(SIGPIPE, SIG_IGN);
    /* `--connect SOCKET ROLE...`: a client on the host, through the host channel. */
    int connect_wait = 0;
    if (argc > 3 && !strcmp(argv[1], "--connect")) {
        /* connect relative to the socket's directory: sun_path holds only 108 bytes */
        char *slash = strrchr(argv[2], '/');
        if (slash && slash != argv[2]) {
            *slash = 0;
            if (chdir(argv[2]) < 0) { msg("cannot connect to init: %s: %s", argv[2], strerror(errno)); return EXIT_CLIENT; }
            *slash = '/';
        }
        fmt(g_sock, sizeof g_sock, "%s", slash ? slash + 1 : argv[2]);
        g_remote = 1;
        connect_wait = 10000;   /* a restored init listens again within a few ms */
        argv += 2;
        argc -= 2;
        if (argc > 3 && !strcmp(argv[1], "--alive")) {
            g_alive = (pid_t)atoi(argv[2]);
            argv += 2;
            argc -= 2;
        }
    }
    const char *role = argv[1];
    if (g_remote) {
        g_prefd = connect_init(connect_wait);   /* wait for the socket once; run_client uses it */
        if (!strcmp(role, "logs") || !strcmp(role, "get") || !strcmp(role, "stat") ||
            !strcmp(role, "ls") || !strcmp(role, "mkdir") || !strcmp(role, "rm") ||
            !strcmp(role, "mv"))
            return remote_role(argc, argv, 0);
        if (!strcmp(role, "put")) return remote_role(argc, argv, 1);
        if (!strcmp(role, "prepare") && argc == 2) { g_wait_eof = 1; return run_client("prepare", 8, 0, 0, 0); }
        if (!strcmp(role, "init") || !strcmp(role, "supervise")) return usage();
    }

    if (!strcmp(role, "init")) return run_init(argc, argv);
    if (!strcmp(role, "exec")) return cmd_exec(argc, argv);
    if (!strcmp(role, "logs")) return cmd_logs(argc, argv);
    if (!strcmp(role, "get")) return cmd_get(argc, argv);
    if (!strcmp(role, "put")) return cmd_put(argc, argv);
    if (!strcmp(role, "stat")) return cmd_stat(argc, argv);
    if (!strcmp(role, "ls")) return cmd_ls(argc, argv);
    if (!strcmp(role, "mkdir")) return cmd_mkdir(argc, argv);
    if (!strcmp(role, "rm")) return cmd_rm(argc, argv);
    if (!strcmp(role, "mv")) return cmd_mv(argc, argv);
    if (!strcmp(role, "supervise")) return cmd_supervise(argc, argv);
    if (!strcmp(role, "ps") && argc == 2) return run_client("ps", 3, 0, 0, 0);
    if (!strcmp(role, "restored") && argc == 2) return run_client("restored", 9, 0, 0, 0);
    if (!strcmp(role, "ping") && argc == 2) {
        if (g_prefd < 0) close(connect_init(5000));   /* wait (up to 5 s) for the socket */
        return run_client("ping", 5, 0, 0, 0);
    }
    if (!strcmp(role, "input") && (argc == 3 || (argc == 4 && !strcmp(argv[2], "-c")))) {
        struct buf req = {0};
        buf_add(&req, "input", 6);
        buf_add(&req, argv[argc - 1], strlen(argv[argc - 1]) + 1);
        g_keep_stdin = argc == 3;
        return run_client(req.p, req.len, 1, 0, 0);
    }
    if (!strcmp(role, "forget") && argc == 3) {
        struct buf req = {0};
        buf_add(&req, "forget", 7);
        buf_add(&req, argv[2], strlen(argv[2]) + 1);
        return run_client(req.p, req.len, 0, 0, 0);
    }
    if (!strcmp(role, "kill") && (argc == 3 || argc == 4)) {
        struct buf req = {0};
        buf_add(&req, "kill", 5);
        buf_add(&req, argv[2], strlen(argv[2]) + 1);
        const char *sig = argc == 4 ? argv[3] : "TERM";
        if (parse_signal(sig) < 0) { msg("bad signal: %s", sig); return 2; }
        buf_add(&req, sig, strlen(sig) + 1);
        return run_client(req.p, req.len, 0, 0, 0);
    }
    return usage();
}
