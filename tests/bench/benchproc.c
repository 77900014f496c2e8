/* Processes for the benchmarks' synthetic host. The mode comes from the environment, so the
 * argv (what vgpumon and process-exporter classify) is free to look like Ollama's:
 *
 *   BENCH_MODE=idle  BENCH_COUNT=N
 *       fork N children that only sleep; print "ready\n" when all exist; when stdin reaches
 *       EOF (the benchmark is done, or died), kill and reap them and exit (should this process
 *       die first, every child has PR_SET_PDEATHSIG=SIGKILL).
 *   BENCH_MODE=runner  BENCH_LIBS=a.so:b.so  BENCH_FILLER=file  BENCH_PIECES=N  BENCH_LATE=c.so
 *       map each library whole (open, mmap, close, as ld.so does), then map FILLER in N
 *       one-page pieces with alternating protections (so the N VMAs never merge), print
 *       "ready\n"; on SIGUSR1 map BENCH_LATE and print the CLOCK_REALTIME before its open and
 *       after its mmap;
 *       exit on stdin EOF (PR_SET_PDEATHSIG=SIGKILL as well).
 *   BENCH_MODE=churn  BENCH_RATE=R  BENCH_SECONDS=S  BENCH_PROGRAM=/bin/true
 *       start PROGRAM R times a second for S seconds (posix_spawn, paced on absolute
 *       CLOCK_MONOTONIC deadlines; a start more than 100 ms late is dropped, not bunched),
 *       reap each child as it exits, then print "started N seconds T" (N programs in T s).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <spawn.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t load_requested;

static void die_with_parent(pid_t parent) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(0);
}

/* open, mmap, close, as ld.so does; `times` (if given) gets the time before the open and the
 * time the mapping exists. */
static int map_whole(const char *path, struct timespec *times) {
    if (times) clock_gettime(CLOCK_REALTIME, &times[0]);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) { perror(path); return -1; }
    struct stat st;
    if (fstat(fd, &st) < 0 || st.st_size == 0) { close(fd); return -1; }
    void *p = mmap(NULL, st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (times) clock_gettime(CLOCK_REALTIME, &times[1]);
    close(fd);
    return p == MAP_FAILED ? -1 : 0;
}

static int map_pieces(const char *path, long pieces) {
    long page = sysconf(_SC_PAGESIZE);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) { perror(path); return -1; }
    char *base = mmap(NULL, pieces * page, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (base == MAP_FAILED) { perror("mmap filler"); return -1; }
    for (long i = 1; i < pieces; i += 2)
        if (mprotect(base + i * page, page, PROT_READ | PROT_WRITE) < 0) {
            perror("mprotect"); return -1;
        }
    return 0;
}

static void on_usr1(int sig) { (void)sig; load_requested = 1; }

static void wait_for_eof(void) {
    char buf[64];
    for (;;) {
        ssize_t n = read(0, buf, sizeof buf);
        if (n == 0 || (n < 0 && errno != EINTR)) return;
    }
}

static int idle(long count) {
    pid_t self = getpid();
    pid_t *children = calloc(count > 0 ? count : 1, sizeof *children);
    if (!children) { perror("calloc"); return 1; }
    for (long i = 0; i < count; i++) {
        pid_t child = fork();
        if (child < 0) { perror("fork"); return 1; }
        if (child == 0) {
            die_with_parent(self);
            close(0);
            for (;;) pause();
        }
        children[i] = child;
    }
    printf("ready\n");
    fflush(stdout);
    wait_for_eof();
    /* Kill and reap them here, so none is left (or a zombie) once this process has exited. */
    for (long i = 0; i < count; i++) kill(children[i], SIGKILL);
    for (long i = 0; i < count; i++) waitpid(children[i], NULL, 0);
    return 0;
}

static int runner(void) {
    die_with_parent(getppid());
    const char *libs = getenv("BENCH_LIBS"), *filler = getenv("BENCH_FILLER");
    const char *late = getenv("BENCH_LATE"), *pieces = getenv("BENCH_PIECES");
    if (libs && *libs) {
        char *copy = strdup(libs);
        for (char *lib = strtok(copy, ":"); lib; lib = strtok(NULL, ":"))
            if (map_whole(lib, NULL) < 0) return 1;
        free(copy);
    }
    if (filler && pieces && atol(pieces) > 0 && map_pieces(filler, atol(pieces)) < 0) return 1;
    struct sigaction sa = {0};
    sa.sa_handler = on_usr1;
    sigaction(SIGUSR1, &sa, NULL);
    printf("ready\n");
    fflush(stdout);
    char buf[64];
    for (;;) {
        ssize_t n = read(0, buf, sizeof buf);
        if (n == 0 || (n < 0 && errno != EINTR)) return 0;
        if (load_requested && late) {
            load_requested = 0;
            struct timespec ts[2];
            int failed = map_whole(late, ts);
            printf("%s %lld.%09ld %lld.%09ld\n", failed ? "failed" : "loaded",
                   (long long)ts[0].tv_sec, ts[0].tv_nsec, (long long)ts[1].tv_sec, ts[1].tv_nsec);
            fflush(stdout);
        }
    }
}

extern char **environ;

static void reap(long *running, int block) {
    while (*running > 0) {
        pid_t pid = waitpid(-1, NULL, block ? 0 : WNOHANG);
        if (pid <= 0) return;
        (*running)--;
    }
}

static double seconds_since(const struct timespec *start) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (now.tv_sec - start->tv_sec) + (now.tv_nsec - start->tv_nsec) / 1e9;
}

static int churn(long rate, double seconds, const char *program) {
    die_with_parent(getppid());
    if (rate <= 0 || seconds <= 0) { fprintf(stderr, "churn: BENCH_RATE, BENCH_SECONDS\n"); return 2; }
    long total = (long)(rate * seconds + 0.5), started = 0, running = 0;
    char *argv[] = {(char *)program, NULL};
    struct timespec start, next;
    clock_gettime(CLOCK_MONOTONIC, &start);
    next = start;
    for (long i = 0; i < total; i++) {
        long ns = start.tv_nsec + (long)((i * 1000000000.0) / rate);
        next.tv_sec = start.tv_sec + ns / 1000000000L;
        next.tv_nsec = ns % 1000000000L;
        while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &next, NULL) == EINTR) {}
        reap(&running, 0);
        if (seconds_since(&start) - i / (double)rate > 0.1) continue;  /* late: dropped */
        pid_t pid;
        if (posix_spawn(&pid, program, NULL, NULL, argv, environ) != 0) {
            perror("posix_spawn");
            return 1;
        }
        started++;
        running++;
    }
    reap(&running, 1);
    printf("started %ld seconds %.3f\n", started, seconds_since(&start));
    fflush(stdout);
    return 0;
}

int main(void) {
    const char *mode = getenv("BENCH_MODE");
    if (mode && strcmp(mode, "idle") == 0) {
        const char *count = getenv("BENCH_COUNT");
        return idle(count ? atol(count) : 0);
    }
    if (mode && strcmp(mode, "runner") == 0) return runner();
    if (mode && strcmp(mode, "churn") == 0) {
        const char *rate = getenv("BENCH_RATE"), *seconds = getenv("BENCH_SECONDS");
        const char *program = getenv("BENCH_PROGRAM");
        return churn(rate ? atol(rate) : 0, seconds ? atof(seconds) : 0,
                     program ? program : "/bin/true");
    }
    fprintf(stderr, "BENCH_MODE must be idle, runner or churn\n");
    return 2;
}
