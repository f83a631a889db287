// Request/response and throughput between two namespaces, netperf-style.
//   rr server PORT
//   rr client IP PORT rr|stream STREAMS SECONDS
// rr: each stream sends one byte and waits for one back, as fast as it can;
// prints transactions per second over all streams. stream: each stream
// writes 64 KiB chunks; prints Gbit/s.
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

static void *serve(void *arg)
{
	int fd = (int)(long)arg;
	char buf[65536];
	ssize_t n;
	while ((n = read(fd, buf, sizeof(buf))) > 0) {
		if (n == 1 && write(fd, buf, 1) != 1)
			break;
	}
	close(fd);
	return NULL;
}

struct job {
	struct sockaddr_in to;
	int stream;
	double seconds;
	unsigned long long done;
};

static void *run(void *arg)
{
	struct job *j = arg;
	int fd = socket(AF_INET, SOCK_STREAM, 0), one = 1;
	static char chunk[65536];
	char c = 'x';
	if (fd < 0 || connect(fd, (struct sockaddr *)&j->to, sizeof(j->to)) != 0) {
		perror("connect");
		exit(1);
	}
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	double end = now() + j->seconds;
	while (now() < end) {
		if (j->stream) {
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
		fprintf(stderr, "usage: rr server PORT | rr client IP PORT rr|stream STREAMS SECONDS\n");
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
		jobs[i].stream = !strcmp(argv[4], "stream");
		jobs[i].seconds = atof(argv[6]);
		pthread_create(&threads[i], NULL, run, &jobs[i]);
	}
	unsigned long long total = 0;
	for (int i = 0; i < streams; i++) {
		pthread_join(threads[i], NULL);
		total += jobs[i].done;
	}
	double secs = atof(argv[6]);
	if (jobs[0].stream)
		printf("%.3f\n", total * 8 / secs / 1e9);
	else
		printf("%.0f\n", total / secs);
	return 0;
}
