/*
 * A UDP flood for benchmarks: sends one prebuilt Ethernet frame as fast as
 * it can through an AF_PACKET socket (qdisc bypassed, sendmmsg batches).
 * Usage: flood IFNAME DST_MAC SRC_IP DST_IP DST_PORT SECONDS
 * Prints the packets sent. Only ever run inside the benchmark's namespaces.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BATCH 256

static unsigned short csum(const void *data, int len)
{
	const unsigned short *p = data;
	unsigned long sum = 0;

	for (; len > 1; len -= 2)
		sum += *p++;
	while (sum >> 16)
		sum = (sum & 0xffff) + (sum >> 16);
	return ~sum;
}

int main(int argc, char **argv)
{
	unsigned char frame[60] = {0}, mac[6];
	struct sockaddr_ll addr = {0};
	struct mmsghdr msgs[BATCH];
	struct iovec iov = {frame, sizeof(frame)};
	unsigned long sent = 0;
	int fd, one = 1;
	double end;
	struct timespec ts;

	if (argc != 7 || sscanf(argv[2], "%hhx:%hhx:%hhx:%hhx:%hhx:%hhx", &mac[0], &mac[1], &mac[2], &mac[3], &mac[4], &mac[5]) != 6) {
		fprintf(stderr, "usage: flood IFNAME DST_MAC SRC_IP DST_IP DST_PORT SECONDS\n");
		return 2;
	}
	memcpy(frame, mac, 6);
	frame[6] = 0x02;
	frame[12] = 0x08;
	/* IPv4 header */
	frame[14] = 0x45;
	frame[16] = 0;
	frame[17] = 46;
	frame[22] = 64;
	frame[23] = 17;
	inet_pton(AF_INET, argv[3], frame + 26);
	inet_pton(AF_INET, argv[4], frame + 30);
	*(unsigned short *)(frame + 24) = csum(frame + 14, 20);
	/* UDP header, no checksum */
	*(unsigned short *)(frame + 34) = htons(40000);
	*(unsigned short *)(frame + 36) = htons(atoi(argv[5]));
	*(unsigned short *)(frame + 38) = htons(26);

	fd = socket(AF_PACKET, SOCK_RAW, 0);
	if (fd < 0) {
		perror("socket");
		return 1;
	}
	setsockopt(fd, SOL_PACKET, PACKET_QDISC_BYPASS, &one, sizeof(one));
	addr.sll_family = AF_PACKET;
	addr.sll_ifindex = if_nametoindex(argv[1]);
	addr.sll_halen = 6;
	memcpy(addr.sll_addr, mac, 6);
	for (int i = 0; i < BATCH; i++) {
		memset(&msgs[i], 0, sizeof(msgs[i]));
		msgs[i].msg_hdr.msg_iov = &iov;
		msgs[i].msg_hdr.msg_iovlen = 1;
		msgs[i].msg_hdr.msg_name = &addr;
		msgs[i].msg_hdr.msg_namelen = sizeof(addr);
	}
	clock_gettime(CLOCK_MONOTONIC, &ts);
	end = ts.tv_sec + ts.tv_nsec / 1e9 + atof(argv[6]);
	for (;;) {
		int n = sendmmsg(fd, msgs, BATCH, 0);

		if (n > 0)
			sent += n;
		clock_gettime(CLOCK_MONOTONIC, &ts);
		if (ts.tv_sec + ts.tv_nsec / 1e9 >= end)
			break;
	}
	printf("%lu\n", sent);
	return 0;
}
