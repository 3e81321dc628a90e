/*
 * fieldtrack's per-device quota for Mosquitto 2.0 (plugin API version 5).
 *
 * Mosquitto 2.0.11 has no per-client rate limit, and its queue limits (max_queued_messages,
 * max_queued_bytes) count per *subscriber* session, not per publisher: while ingest is away,
 * one device flooding its own topics fills ingest's queue, after which the broker drops every
 * device's messages, already acknowledged to them. This plugin gives each publishing account
 * (a device: username = client id = serial) a token bucket of messages and of bytes; a
 * message beyond it is refused: MQTT 5 gets PUBACK reason 135 (not authorised), MQTT 3.1.1
 * a PUBACK, and the message is dropped. Only that device's excess is refused.
 *
 * Where it hooks in (read against Mosquitto 2.0.11's src/handle_publish.c, context.c,
 * security.c and plugin.c):
 *
 * - MOSQ_EVT_ACL_CHECK, write access. The broker asks it for every PUBLISH a client sends
 *   (before the message event) and for every last will, at the moment it would send the will
 *   (wills raise no message event). So the quota is charged here, once per message, wills
 *   included; and retained messages are refused here on any topic but `.../status`, wills
 *   included (dynamic security matches topics only and ignores the retain flag). This
 *   callback never allows anything: it refuses, or answers MOSQ_ERR_PLUGIN_DEFER and dynamic
 *   security decides. Mosquitto asks the ACL callbacks in the order the plugins are loaded
 *   and stops at the first answer that is not DEFER, so this plugin must be loaded *before*
 *   dynamic security (its `plugin` line first); after it, dynamic security's "allowed" would
 *   end the check before this plugin saw the message. If every plugin defers, Mosquitto
 *   denies.
 * - MOSQ_EVT_MESSAGE. Every accepted PUBLISH under the prefix loses its MQTT 5 properties
 *   (user properties, content type, response topic, correlation data): Mosquitto copies the
 *   event's properties back into the stored message, and neither this quota nor Mosquitto's
 *   max_queued_bytes counts anything but the payload, so a device could otherwise send
 *   ~256 KiB of uncounted user properties with every empty message. Ingest reads none of them.
 *
 * A will's properties cannot be removed or even seen by a plugin in 2.0.11 (the ACL check
 * carries none), so an MQTT 5 client's write is charged `will_properties_bytes` on top of
 * its payload: the most the properties of a will (carried in one CONNECT packet) can take.
 * For an ordinary PUBLISH the message event follows its ACL check at once, in the broker's
 * single thread, and refunds that extra: only wills (and publishes that dynamic security
 * then refuses) keep paying it. A charge may take the bucket below zero; the next message is
 * then refused until it has refilled.
 *
 * Options (mosquitto.conf, after the `plugin` line):
 *   plugin_opt_topic_prefix           only publishes under this prefix count (device topics)
 *   plugin_opt_msgs_per_s             sustained messages per second per account
 *   plugin_opt_burst_msgs             messages an idle account may send at once
 *   plugin_opt_bytes_per_s            sustained bytes per second per account
 *   plugin_opt_burst_bytes            bytes an idle account may send at once
 *   plugin_opt_retain_suffix          the one topic suffix that may carry retained messages
 *   plugin_opt_will_properties_bytes  what an MQTT 5 will is charged beyond its payload
 *
 * Buckets are keyed by username (a reconnect does not refill them) and live as long as the
 * broker: one small entry per account that ever published, and accounts are provisioned.
 */
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <mosquitto.h>
#include <mosquitto_broker.h>
#include <mosquitto_plugin.h>

#define TABLE_SIZE 65536u    /* hash chains; accounts beyond this share chains */
#define LOG_EVERY_S 10.0     /* one "refused" log line per account per this many seconds */
#define MQTT5 5              /* mosquitto_client_protocol_version() of an MQTT 5 client */

struct bucket {
	char *username;
	double msgs;
	double bytes;
	double updated;
	double logged;
	uint64_t refused;
	struct bucket *next;
};

/* The extra charged by the latest write check, refunded if it was an ordinary PUBLISH. */
struct provisional {
	const struct mosquitto *client;
	const char *topic;
	struct bucket *bucket;
	double bytes;
};

static mosquitto_plugin_id_t *plugin_id = NULL;
static struct bucket *table[TABLE_SIZE];
static struct provisional pending;
static char *topic_prefix = NULL;
static char *retain_suffix = NULL;
static double msgs_per_s = 1000.0;
static double burst_msgs = 100000.0;
static double bytes_per_s = 4194304.0;
static double burst_bytes = 67108864.0;
static double will_properties_bytes = 263168.0;

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static uint32_t hash(const char *s)
{
	uint32_t h = 2166136261u; /* FNV-1a */
	while(*s){
		h ^= (uint8_t)*s++;
		h *= 16777619u;
	}
	return h;
}

static struct bucket *bucket_for(const char *username, double now)
{
	uint32_t slot = hash(username) % TABLE_SIZE;
	struct bucket *b;

	for(b = table[slot]; b; b = b->next){
		if(!strcmp(b->username, username)) return b;
	}
	b = calloc(1, sizeof(*b));
	if(!b) return NULL;
	b->username = strdup(username);
	if(!b->username){
		free(b);
		return NULL;
	}
	b->msgs = burst_msgs;
	b->bytes = burst_bytes;
	b->updated = now;
	b->logged = now - LOG_EVERY_S;
	b->next = table[slot];
	table[slot] = b;
	return b;
}

static bool ends_with(const char *s, const char *suffix)
{
	size_t n = strlen(s), m = strlen(suffix);
	return n >= m && !strcmp(s + n - m, suffix);
}

static bool device_topic(const char *topic)
{
	return topic && !strncmp(topic, topic_prefix, strlen(topic_prefix));
}

static int on_acl_check(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_acl_check *ed = event_data;
	const char *username;
	struct bucket *b;
	double now, extra;

	(void)event;
	(void)userdata;
	if(ed->access != MOSQ_ACL_WRITE || !device_topic(ed->topic)) return MOSQ_ERR_PLUGIN_DEFER;
	username = mosquitto_client_username(ed->client);
	if(!username) return MOSQ_ERR_PLUGIN_DEFER; /* anonymous access is off */

	if(ed->retain && !ends_with(ed->topic, retain_suffix)){
		mosquitto_log_printf(MOSQ_LOG_NOTICE, "fieldtrack quota: refused a retained message from %s on %s",
				username, ed->topic);
		return MOSQ_ERR_ACL_DENIED;
	}

	now = now_s();
	b = bucket_for(username, now);
	if(!b) return MOSQ_ERR_PLUGIN_DEFER; /* out of memory: fail open rather than refuse everyone */
	b->msgs += (now - b->updated) * msgs_per_s;
	if(b->msgs > burst_msgs) b->msgs = burst_msgs;
	b->bytes += (now - b->updated) * bytes_per_s;
	if(b->bytes > burst_bytes) b->bytes = burst_bytes;
	b->updated = now;

	if(b->msgs < 1.0 || b->bytes < (double)ed->payloadlen){
		b->refused++;
		if(now - b->logged >= LOG_EVERY_S){
			mosquitto_log_printf(MOSQ_LOG_WARNING,
					"fieldtrack quota: %s is over its quota (%.0f msgs/s, %.0f bytes/s); "
					"%llu messages refused so far", username, msgs_per_s, bytes_per_s,
					(unsigned long long)b->refused);
			b->logged = now;
		}
		return MOSQ_ERR_ACL_DENIED;
	}
	extra = mosquitto_client_protocol_version(ed->client) == MQTT5 ? will_properties_bytes : 0.0;
	b->msgs -= 1.0;
	b->bytes -= (double)ed->payloadlen + extra;
	pending.client = ed->client;
	pending.topic = ed->topic;
	pending.bucket = b;
	pending.bytes = extra;
	return MOSQ_ERR_PLUGIN_DEFER; /* within quota: dynamic security decides */
}

static int on_message(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_message *ed = event_data;
	struct bucket *b = pending.bucket;

	(void)event;
	(void)userdata;
	if(!device_topic(ed->topic)) return MOSQ_ERR_SUCCESS;
	/* The write check just before charged this PUBLISH as if it were a will: refund. */
	if(b && pending.client == ed->client && pending.topic == ed->topic){
		b->bytes += pending.bytes;
		if(b->bytes > burst_bytes) b->bytes = burst_bytes;
	}
	memset(&pending, 0, sizeof(pending));
	mosquitto_property_free_all(&ed->properties);
	ed->properties = NULL;
	return MOSQ_ERR_SUCCESS;
}

int mosquitto_plugin_version(int supported_version_count, const int *supported_versions)
{
	int i;
	for(i = 0; i < supported_version_count; i++){
		if(supported_versions[i] == 5) return 5;
	}
	return -1;
}

static bool positive(const char *value, double *out)
{
	char *end;
	double v = strtod(value, &end);
	/* strtod reads "nan", "inf" and overflows to HUGE_VAL: none of them is a limit */
	if(end == value || *end || !isfinite(v) || v <= 0) return false;
	*out = v;
	return true;
}

int mosquitto_plugin_init(mosquitto_plugin_id_t *identifier, void **userdata,
		struct mosquitto_opt *options, int option_count)
{
	int i, rc;
	bool ok = true;

	(void)userdata;
	plugin_id = identifier;
	for(i = 0; i < option_count; i++){
		const char *k = options[i].key, *v = options[i].value;
		if(!strcmp(k, "topic_prefix")) topic_prefix = strdup(v);
		else if(!strcmp(k, "retain_suffix")) retain_suffix = strdup(v);
		else if(!strcmp(k, "msgs_per_s")) ok = ok && positive(v, &msgs_per_s);
		else if(!strcmp(k, "burst_msgs")) ok = ok && positive(v, &burst_msgs);
		else if(!strcmp(k, "bytes_per_s")) ok = ok && positive(v, &bytes_per_s);
		else if(!strcmp(k, "burst_bytes")) ok = ok && positive(v, &burst_bytes);
		else if(!strcmp(k, "will_properties_bytes")) ok = ok && positive(v, &will_properties_bytes);
	}
	if(!ok || !topic_prefix || !retain_suffix){
		mosquitto_log_printf(MOSQ_LOG_ERR, "fieldtrack quota: topic_prefix, retain_suffix and "
				"positive, finite numbers are required");
		return MOSQ_ERR_INVAL;
	}
	mosquitto_log_printf(MOSQ_LOG_NOTICE, "fieldtrack quota: %.0f msgs/s (burst %.0f), %.0f bytes/s "
			"(burst %.0f) per account under %s, MQTT 5 wills %.0f bytes more; retain only on *%s",
			msgs_per_s, burst_msgs, bytes_per_s, burst_bytes, topic_prefix,
			will_properties_bytes, retain_suffix);
	rc = mosquitto_callback_register(plugin_id, MOSQ_EVT_ACL_CHECK, on_acl_check, NULL, NULL);
	if(rc != MOSQ_ERR_SUCCESS) return rc;
	return mosquitto_callback_register(plugin_id, MOSQ_EVT_MESSAGE, on_message, NULL, NULL);
}

int mosquitto_plugin_cleanup(void *userdata, struct mosquitto_opt *options, int option_count)
{
	unsigned i;
	(void)userdata;
	(void)options;
	(void)option_count;
	mosquitto_callback_unregister(plugin_id, MOSQ_EVT_ACL_CHECK, on_acl_check, NULL);
	mosquitto_callback_unregister(plugin_id, MOSQ_EVT_MESSAGE, on_message, NULL);
	for(i = 0; i < TABLE_SIZE; i++){
		while(table[i]){
			struct bucket *next = table[i]->next;
			free(table[i]->username);
			free(table[i]);
			table[i] = next;
		}
	}
	free(topic_prefix);
	free(retain_suffix);
	return MOSQ_ERR_SUCCESS;
}
