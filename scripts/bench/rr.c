// Request/response and throughput between two namespaces, netperf-style.
//   rr server PORT
//   rr client IP PORT rr|stream|http|crr STREAMS SECONDS
// rr: each stream sends one byte and waits for one back, as fast as it can;
// prints transactions per second over all streams. stream: each stream
// writes 64 KiB chunks; prints Gbit/s. http: an HTTP/1.1 GET and its 200
// response per transaction on one connection; crr: the same on a new
// connection each time (connect, request, response, close).
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static const char HTTP_REQUEST[] = "GET /rr HTTP/1.1\r\nHost: api\r\n\r\n";
static const char HTTP_RESPONSE[] = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

/* One HTTP transaction on fd: 1 when answered whole. */
static int http_transaction(int fd)
{
	char buf[256];
	size_t got = 0, want = sizeof(HTTP_RESPONSE) - 1;
	if (write(fd, HTTP_REQUEST, sizeof(HTTP_REQUEST) - 1) != sizeof(HTTP_REQUEST) - 1)
		return 0;
	while (got < want) {
		ssize_t n = read(fd, buf, sizeof(buf));
		if (n <= 0)
			return 0;
		got += n;
	}
	return 1;
}

static void *serve(void *arg)
{
	int fd = (int)(long)arg;
	char buf[65536];
	ssize_t n;
	while ((n = read(fd, buf, sizeof(buf))) > 0) {
		/* An HTTP request (one per read: the client waits for each answer). */
		if (buf[0] == 'G') {
			if (write(fd, HTTP_RESPONSE, sizeof(HTTP_RESPONSE) - 1) != sizeof(HTTP_RESPONSE) - 1)
				break;
			continue;
		}
		if (n == 1 && write(fd, buf, 1) != 1)
			break;
	}
	close(fd);
	return NULL;
}

enum mode { RR, STREAM, HTTP, CRR };

struct job {
	struct sockaddr_in to;
	enum mode mode;
	double seconds;
	unsigned long long done;
};

static void *run(void *arg)
{
	struct job *j = arg;
	int fd, one = 1;
	static char chunk[65536];
	char c = 'x';
	double end = now() + j->seconds;
	if (j->mode == CRR) {
		while (now() < end) {
			fd = socket(AF_INET, SOCK_STREAM, 0);
			if (fd < 0 || connect(fd, (struct sockaddr *)&j->to, sizeof(j->to)) != 0) {
				perror("connect");
				exit(1);
			}
			setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
			/* RST on close: no TIME_WAIT pile-up over the run. */
			struct linger l = {.l_onoff = 1, .l_linger = 0};
			setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof(l));
			if (!http_transaction(fd))
				break;
			close(fd);
			j->done++;
		}
		return NULL;
	}
	fd = socket(AF_INET, SOCK_STREAM, 0);
	if (fd < 0 || connect(fd, (struct sockaddr *)&j->to, sizeof(j->to)) != 0) {
		perror("connect");
		exit(1);
	}
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	while (now() < end) {
		if (j->mode == HTTP) {
			if (!http_transaction(fd))
				break;
			j->done++;
		} else if (j->mode == STREAM) {
			ssize_t n = write(fd, chunk, sizeof(chunk));
			if (n <= 0)
				break;
			j->done += n;
		} else {
			if (write(fd, &c, 1) != 1 || read(fd, &c, 1) != 1)
				break;
			j->done++;
		}
	}
	close(fd);
	return NULL;
}

int main(int argc, char **argv)
{
	if (argc == 3 && !strcmp(argv[1], "server")) {
		int s = socket(AF_INET, SOCK_STREAM, 0), one = 1;
		struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[2]))};
		setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
		if (bind(s, (struct sockaddr *)&a, sizeof(a)) || listen(s, 64)) {
			perror("listen");
			return 1;
		}
		for (;;) {
			int fd = accept(s, NULL, NULL);
			pthread_t t;
			if (fd < 0)
				continue;
			setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
			pthread_create(&t, NULL, serve, (void *)(long)fd);
			pthread_detach(t);
		}
	}
	if (argc != 7 || strcmp(argv[1], "client")) {
		fprintf(stderr, "usage: rr server PORT | rr client IP PORT rr|stream|http|crr STREAMS SECONDS\n");
		return 2;
	}
	int streams = atoi(argv[5]);
	struct job jobs[64] = {0};
	pthread_t threads[64];
	if (streams < 1 || streams > 64)
		return 2;
	for (int i = 0; i < streams; i++) {
		jobs[i].to.sin_family = AF_INET;
		jobs[i].to.sin_port = htons(atoi(argv[3]));
		inet_pton(AF_INET, argv[2], &jobs[i].to.sin_addr);
		jobs[i].mode = !strcmp(argv[4], "stream") ? STREAM
			       : !strcmp(argv[4], "http") ? HTTP
			       : !strcmp(argv[4], "crr")  ? CRR
							  : RR;
		jobs[i].seconds = atof(argv[6]);
		pthread_create(&threads[i], NULL, run, &jobs[i]);
	}
	unsigned long long total = 0;
	for (int i = 0; i < streams; i++) {
		pthread_join(threads[i], NULL);
		total += jobs[i].done;
	}
	double secs = atof(argv[6]);
	if (jobs[0].mode == STREAM)
		printf("%.3f\n", total * 8 / secs / 1e9);
	else
		printf("%.0f\n", total / secs);
	return 0;
}
