// Connect + first-byte latency, for scripts/bench/service-latency.sh.
//
//   connect_latency serve PORT
//       accepts connections; for each, reads one byte and answers one byte.
//   connect_latency measure COUNT PORT IP [IP...]
//       COUNT times: connect to a random IP of the list, send a byte, wait
//       for the answer; prints "p50_us p99_us mean_us errors".
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double now_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

static int cmp(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return (x > y) - (x < y);
}

static int serve(int port)
{
	struct sockaddr_in addr = { .sin_family = AF_INET, .sin_port = htons(port) };
	int one = 1, fd = socket(AF_INET, SOCK_STREAM, 0);

	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0 || listen(fd, 4096) < 0) {
		perror("listen");
		return 1;
	}
	signal(SIGPIPE, SIG_IGN);
	for (;;) {
		char byte;
		int c = accept(fd, NULL, NULL);
		if (c < 0)
			continue;
		if (read(c, &byte, 1) == 1)
			(void)!write(c, "y", 1);
		close(c);
	}
}

int main(int argc, char **argv)
{
	if (argc == 3 && !strcmp(argv[1], "serve"))
		return serve(atoi(argv[2]));
	if (argc < 5 || strcmp(argv[1], "measure")) {
		fprintf(stderr, "usage: connect_latency serve PORT | measure COUNT PORT IP [IP...]\n");
		return 2;
	}
	int count = atoi(argv[2]), port = atoi(argv[3]), n_ips = argc - 4, errors = 0;
	double *lat = calloc(count, sizeof(double)), sum = 0;
	struct sockaddr_in *to = calloc(n_ips, sizeof(*to));

	for (int i = 0; i < n_ips; i++) {
		to[i].sin_family = AF_INET;
		to[i].sin_port = htons(port);
		inet_pton(AF_INET, argv[4 + i], &to[i].sin_addr);
	}
	srand(42);
	for (int i = 0; i < count; i++) {
		const struct sockaddr_in *dst = &to[rand() % n_ips];
		char byte;
		int one = 1, fd = socket(AF_INET, SOCK_STREAM, 0);
		struct linger lin = { 1, 0 };
		double start = now_us();

		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
		if (connect(fd, (const struct sockaddr *)dst, sizeof(*dst)) < 0 || write(fd, "x", 1) != 1 ||
		    read(fd, &byte, 1) != 1) {
			errors++;
			close(fd);
			lat[i] = 0;
			continue;
		}
		lat[i] = now_us() - start;
		sum += lat[i];
		// RST on close: no TIME_WAIT pile-up across tens of thousands of connections.
		setsockopt(fd, SOL_SOCKET, SO_LINGER, &lin, sizeof(lin));
		close(fd);
	}
	qsort(lat, count, sizeof(double), cmp);
	int ok = count - errors;
	double *good = lat + errors;
	printf("%.1f %.1f %.1f %d\n", ok ? good[ok / 2] : 0, ok ? good[(int)(ok * 0.99)] : 0, ok ? sum / ok : 0, errors);
	return 0;
}
