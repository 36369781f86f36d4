// sluice's clickstream query (crates/sluice-stream/src/clickstream.rs, crates/sluice-cli/jobs/clickstream.toml)
// as a Kafka Streams 4.4 application, the peer it is benchmarked against on the same broker and input.
//
// Build and run (from the repository root):
//   javac -d .peers/java/classes -cp '.peers/kafka/lib/*' scripts/peers/java/ClickstreamStreams.java
//   java -Xmx256m -cp '.peers/java/classes:.peers/kafka/lib/*' ClickstreamStreams \
//       BOOTSTRAP INPUT_TOPIC OUTPUT_TOPIC APP_ID [--threads N] [--expect N] [--state-dir DIR]
//       [--idle-ms MS] [--exactly-once]
//
// Input: records whose value is the CSV line `user,item,time_ms` (UTF-8; the key, the user, is not read).
// Event time is time_ms. A value that is not such a line (fewer than three fields, a time that is not an
// integer or is negative, not UTF-8, null) is counted and skipped.
// Query: clicks per item over event-time windows of 60 s sliding every 10 s (epoch-aligned, [start, end)),
// 5 s of allowed lateness; when a window closes (event time reaches window end + 5 s) its 10 most clicked
// items (ties: item name ascending) go to OUTPUT_TOPIC, one record each, key the window start in decimal,
// value {"window_start":MS,"window_end":MS,"rank":R,"item":"...","clicks":N}, record timestamp the
// window end. Final results only: each window is published once.
//
// Options:
//   --threads N      num.stream.threads (default 1)
//   --expect N       N = every record the caller wrote to INPUT_TOPIC (junk lines and flush clicks
//                    included; it must be exact): once all N went through and every window they close
//                    was published, print the "processed" line, close (30 s at most) and exit 0
//   --state-dir DIR  state.dir (default: a new temporary directory, removed at exit)
//   --idle-ms MS     an input partition with no clicks for MS of wall-clock time stops holding event
//                    time back (default 10000, sluice's idle_after in the job file)
//   --exactly-once   processing.guarantee exactly_once_v2 (default at_least_once)
// commit.interval.ms is 100 either way. APP_ID must be new for each run (it names the consumer group and
// the internal topics; a used one resumes from its committed offsets). OUTPUT_TOPIC must exist.
//
// What the caller must do to get the last windows: a window is published only once a later event time
// comes (window end + 5 s), so after the real input write a "flush" click well in the future, e.g.
// `flush,flush,<last time + 600000>` (more than 65 s later; the broker refuses record timestamps over
// an hour ahead by default). The windows the flush click opens are never published. With --expect N
// counting it, the run ends as soon as the last windows are out. Without --expect (or with a wrong N),
// event time waits for every input partition, as sluice's watermark does: write the flush click to every
// partition, or the partitions without one hold it back until they have been idle for --idle-ms.
//
// Stdout, one JSON object per line (logging goes to stderr, WARN and above):
//   {"started_ms":WALL}                         the application is RUNNING
//   {"window_end":MS,"emitted_ms":WALL}         a window's top items were handed to the producer
//   {"processed":N,"seconds":S,"first_ms":WALL,"last_ms":WALL,"unparsable":U,"late":L}   with --expect:
//       first_ms when the first input record was processed, last_ms when everything was done,
//       S = (last_ms - first_ms) / 1000; late = clicks that came more than 5 s of event time behind the
//       greatest one passed to the count (sluice drops those; the count here drops them only from the
//       windows already closed). 0 unless the input itself is out of order.
//
// Topology, and why each published window is complete and equal to sluice's:
//  1. One task per input partition parses the clicks and sends them on keyed by item, tagged with their
//     input partition, through a repartition topic of ONE partition: counting, closing windows and
//     ranking then happen in one task, on one clock. (Kafka Streams keeps stream time per task: with
//     several counting tasks each would close windows on its own, and no one task would know when all
//     the items of a window are final.)
//  2. There, clicks are first put back in event-time order across input partitions (InOrder): the parsing
//     tasks run unevenly, often thousands of records of one partition before the next, and the count
//     takes the greatest time it has seen as stream time, so clicks of a partition behind would come
//     after their windows closed and be dropped. Each input partition's clicks queue up and the earliest
//     goes on while every input partition has one queued (or is idle): the count's stream time is then
//     sluice's watermark, the least over the partitions of their greatest event time.
//  3. count() per item on hopping windows (60 s every 10 s, grace 5 s), then
//     suppress(untilWindowCloses): its buffer is ordered by window end and gives every final count of a
//     window within one call, once stream time passes window end + grace.
//  4. TopItems buffers those by window and publishes a window (the top 10) when counts of a later window
//     arrive, or at a punctuation (stream time, and wall clock every 10 ms, since the counts reach
//     suppress when the record cache is flushed at commit): punctuations never run in the middle of an
//     eviction, so whatever is buffered then is whole.
// The queues of step 2 live in memory only: a crash loses the clicks queued there (fine for a benchmark).

import java.io.IOException;
import java.io.UncheckedIOException;
import java.nio.ByteBuffer;
import java.nio.CharBuffer;
import java.nio.charset.CharacterCodingException;
import java.nio.charset.CodingErrorAction;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayDeque;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Comparator;
import java.util.List;
import java.util.Locale;
import java.util.Properties;
import java.util.TreeMap;
import java.util.concurrent.ConcurrentSkipListSet;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.concurrent.atomic.AtomicLong;
import java.util.stream.Stream;

import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.common.utils.Bytes;
import org.apache.kafka.streams.KafkaStreams;
import org.apache.kafka.streams.StreamsBuilder;
import org.apache.kafka.streams.StreamsConfig;
import org.apache.kafka.streams.errors.StreamsUncaughtExceptionHandler;
import org.apache.kafka.streams.kstream.Consumed;
import org.apache.kafka.streams.kstream.Grouped;
import org.apache.kafka.streams.kstream.Materialized;
import org.apache.kafka.streams.kstream.Named;
import org.apache.kafka.streams.kstream.Produced;
import org.apache.kafka.streams.kstream.Repartitioned;
import org.apache.kafka.streams.kstream.Suppressed;
import org.apache.kafka.streams.kstream.TimeWindows;
import org.apache.kafka.streams.kstream.Window;
import org.apache.kafka.streams.kstream.Windowed;
import org.apache.kafka.streams.processor.PunctuationType;
import org.apache.kafka.streams.processor.TimestampExtractor;
import org.apache.kafka.streams.processor.api.FixedKeyProcessor;
import org.apache.kafka.streams.processor.api.FixedKeyProcessorContext;
import org.apache.kafka.streams.processor.api.FixedKeyRecord;
import org.apache.kafka.streams.processor.api.Processor;
import org.apache.kafka.streams.processor.api.ProcessorContext;
import org.apache.kafka.streams.processor.api.Record;
import org.apache.kafka.streams.state.WindowStore;

import org.apache.logging.log4j.Level;
import org.apache.logging.log4j.core.appender.ConsoleAppender;
import org.apache.logging.log4j.core.config.Configurator;
import org.apache.logging.log4j.core.config.builder.api.AppenderComponentBuilder;
import org.apache.logging.log4j.core.config.builder.api.ConfigurationBuilder;
import org.apache.logging.log4j.core.config.builder.api.ConfigurationBuilderFactory;
import org.apache.logging.log4j.core.config.builder.impl.BuiltConfiguration;

public final class ClickstreamStreams {
    static final long WINDOW_MS = 60_000;
    static final long SLIDE_MS = 10_000;
    static final long GRACE_MS = 5_000;
    static final int TOP = 10;
    /** The value of a click after parsing: the count needs a non-null one, nothing more. */
    static final byte[] NO_VALUE = new byte[0];

    private static final String USAGE =
            "usage: ClickstreamStreams BOOTSTRAP INPUT_TOPIC OUTPUT_TOPIC APP_ID [--threads N] [--expect N]"
                    + " [--state-dir DIR] [--idle-ms MS] [--exactly-once]";

    // ---- progress, shared by the stream threads and the main thread ----

    /** Input records seen right after the source, and how they parsed. */
    static final AtomicLong SOURCE = new AtomicLong();
    static final AtomicLong PARSED = new AtomicLong();
    static final AtomicLong UNPARSABLE = new AtomicLong();
    /** Input records parsed or found unparsable (and, if parsed, sent on). */
    static final AtomicLong SETTLED = new AtomicLong();
    /** Clicks that reached the counting task's merge. */
    static final AtomicLong ARRIVED = new AtomicLong();
    /** --expect, or 0. */
    static volatile long expect;
    /** Clicks passed on, in order, to the windowed count. */
    static final AtomicLong COUNTED = new AtomicLong();
    /** Clicks passed on more than the grace behind the greatest event time before them. */
    static final AtomicLong LATE = new AtomicLong();
    /** Wall-clock time of the first input record. */
    static final AtomicLong FIRST_MS = new AtomicLong();
    /** Greatest event time the counting task has seen (its windowed count's stream time). */
    static final AtomicLong OBSERVED = new AtomicLong(Long.MIN_VALUE);
    /** Ends of the windows that took clicks and are not published yet. */
    static final ConcurrentSkipListSet<Long> OPEN_ENDS = new ConcurrentSkipListSet<>();

    static synchronized void say(String json) {
        System.out.println(json);
        System.out.flush();
    }

    // ---- parsing `user,item,time_ms` ----

    /** The line's time, or Long.MIN_VALUE when it is not `user,item,time_ms` with a time >= 0. */
    static long parseTime(byte[] v) {
        if (v == null) {
            return Long.MIN_VALUE;
        }
        int n = trimmedLength(v);
        if (!plain(v, n)) {
            String[] fields = slowFields(v);
            return fields == null ? Long.MIN_VALUE : timeOf(fields[2]);
        }
        int c1 = indexOf(v, 0, n);
        int c2 = c1 < 0 ? -1 : indexOf(v, c1 + 1, n);
        if (c2 < 0) {
            return Long.MIN_VALUE;
        }
        int c3 = indexOf(v, c2 + 1, n);
        return parseLong(v, c2 + 1, c3 < 0 ? n : c3);
    }

    /** The line's item, or null when it is not `user,item,time_ms` with a time >= 0. */
    static String parseItem(byte[] v) {
        if (v == null) {
            return null;
        }
        int n = trimmedLength(v);
        if (!plain(v, n)) {
            String[] fields = slowFields(v);
            return fields == null || timeOf(fields[2]) == Long.MIN_VALUE ? null : fields[1];
        }
        int c1 = indexOf(v, 0, n);
        int c2 = c1 < 0 ? -1 : indexOf(v, c1 + 1, n);
        if (c2 < 0) {
            return null;
        }
        int c3 = indexOf(v, c2 + 1, n);
        if (parseLong(v, c2 + 1, c3 < 0 ? n : c3) == Long.MIN_VALUE) {
            return null;
        }
        return new String(v, c1 + 1, c2 - c1 - 1, StandardCharsets.ISO_8859_1); // ASCII here
    }

    private static int trimmedLength(byte[] v) {
        int n = v.length;
        while (n > 0 && (v[n - 1] == '\n' || v[n - 1] == '\r')) {
            n--;
        }
        return n;
    }

    /** ASCII without quotes: the fields are what lies between the commas. */
    private static boolean plain(byte[] v, int n) {
        for (int i = 0; i < n; i++) {
            if (v[i] < 0 || v[i] == '"') {
                return false;
            }
        }
        return true;
    }

    private static int indexOf(byte[] v, int from, int to) {
        for (int i = from; i < to; i++) {
            if (v[i] == ',') {
                return i;
            }
        }
        return -1;
    }

    /** A decimal integer >= 0 in v[from, to) (an optional sign, as Rust's i64 parse), else MIN_VALUE. */
    private static long parseLong(byte[] v, int from, int to) {
        int i = from;
        boolean negative = false;
        if (i < to && (v[i] == '+' || v[i] == '-')) {
            negative = v[i] == '-';
            i++;
        }
        if (i == to || to - i > 18) {
            if (i < to && to - i <= 40) {
                return timeOf(new String(v, from, to - from, StandardCharsets.ISO_8859_1));
            }
            return Long.MIN_VALUE;
        }
        long value = 0;
        for (; i < to; i++) {
            int d = v[i] - '0';
            if (d < 0 || d > 9) {
                return Long.MIN_VALUE;
            }
            value = value * 10 + d;
        }
        return negative && value != 0 ? Long.MIN_VALUE : value;
    }

    private static long timeOf(String field) {
        try {
            long t = Long.parseLong(field);
            return t < 0 ? Long.MIN_VALUE : t;
        } catch (NumberFormatException e) {
            return Long.MIN_VALUE;
        }
    }

    /** Fields of a line that is not plain ASCII or has quotes; null if not UTF-8 or fewer than 3. */
    private static String[] slowFields(byte[] v) {
        String line;
        try {
            CharBuffer chars = StandardCharsets.UTF_8.newDecoder()
                    .onMalformedInput(CodingErrorAction.REPORT)
                    .onUnmappableCharacter(CodingErrorAction.REPORT)
                    .decode(ByteBuffer.wrap(v));
            line = chars.toString();
        } catch (CharacterCodingException e) {
            return null;
        }
        int n = line.length();
        while (n > 0 && (line.charAt(n - 1) == '\n' || line.charAt(n - 1) == '\r')) {
            n--;
        }
        line = line.substring(0, n);
        List<String> fields = new ArrayList<>();
        if (line.indexOf('"') < 0) {
            fields.addAll(List.of(line.split(",", -1)));
        } else {
            // RFC 4180: a field may be quoted, "" inside quotes is one quote.
            StringBuilder field = new StringBuilder();
            boolean quoted = false;
            for (int i = 0; i < line.length(); i++) {
                char c = line.charAt(i);
                if (quoted) {
                    if (c == '"' && i + 1 < line.length() && line.charAt(i + 1) == '"') {
                        field.append('"');
                        i++;
                    } else if (c == '"') {
                        quoted = false;
                    } else {
                        field.append(c);
                    }
                } else if (c == '"') {
                    quoted = true;
                } else if (c == ',') {
                    fields.add(field.toString());
                    field.setLength(0);
                } else {
                    field.append(c);
                }
            }
            fields.add(field.toString());
        }
        return fields.size() < 3 ? null : fields.toArray(new String[0]);
    }

    /** Event time from the line; a line that does not parse gets its partition's time (it is dropped later). */
    static final class ClickTime implements TimestampExtractor {
        @Override
        public long extract(ConsumerRecord<Object, Object> record, long partitionTime) {
            long t = parseTime((byte[]) record.value());
            if (t != Long.MIN_VALUE) {
                return t;
            }
            return partitionTime >= 0 ? partitionTime : Math.max(0, record.timestamp());
        }
    }

    // ---- the counting task ----

    /**
     * Counts and parses the input; a click goes on keyed by item, its value saying which input partition
     * it came from. With --expect N, whoever settles the N-th input record sends an end marker after it.
     */
    static final class Parse implements Processor<byte[], byte[], String, byte[]> {
        private ProcessorContext<String, byte[]> context;

        @Override
        public void init(ProcessorContext<String, byte[]> context) {
            this.context = context;
            // A heartbeat now and then gives the counting task a call in which it can find input
            // partitions idle even when no clicks come (it cannot pass clicks on from a punctuator).
            context.schedule(Duration.ofMillis(HEARTBEAT_MS), PunctuationType.WALL_CLOCK_TIME,
                    t -> context.forward(new Record<>("", HEARTBEAT, 0L)));
        }

        @Override
        public void process(Record<byte[], byte[]> record) {
            if (SOURCE.incrementAndGet() == 1) {
                FIRST_MS.compareAndSet(0, System.currentTimeMillis());
            }
            String item = parseItem(record.value());
            if (item == null) {
                UNPARSABLE.incrementAndGet();
            } else {
                PARSED.incrementAndGet();
                int partition = context.recordMetadata().map(m -> m.partition()).orElse(0);
                context.forward(new Record<>(item, partitionTag(partition), record.timestamp()));
            }
            if (SETTLED.incrementAndGet() == expect) {
                context.forward(new Record<>("", END, record.timestamp()));
            }
        }
    }

    private static final byte[][] TAGS = new byte[256][];
    /** The values of the end marker and of a heartbeat (a partition tag has 4 bytes). */
    static final byte[] END = {-1};
    static final byte[] HEARTBEAT = {-2};
    static final long HEARTBEAT_MS = 500;

    static byte[] partitionTag(int partition) {
        if (partition >= 0 && partition < TAGS.length) {
            byte[] tag = TAGS[partition];
            if (tag == null) {
                tag = ByteBuffer.allocate(4).putInt(partition).array();
                TAGS[partition] = tag; // a benign race: every copy says the same
            }
            return tag;
        }
        return ByteBuffer.allocate(4).putInt(partition).array();
    }

    static boolean isEnd(byte[] value) {
        return value != null && value.length == 1 && value[0] == END[0];
    }

    static boolean isHeartbeat(byte[] value) {
        return value != null && value.length == 1 && value[0] == HEARTBEAT[0];
    }

    static int partitionOf(byte[] tag) {
        return tag != null && tag.length == 4 ? Math.max(0, ByteBuffer.wrap(tag).getInt()) : 0;
    }

    /**
     * Right before the windowed count, in the same task: puts the clicks back in event-time order across
     * input partitions, as sluice's watermark (the least of the partitions' greatest event times) does.
     * The parsing tasks, one per input partition, run unevenly (a task may get thousands of one
     * partition's records before the next), and the single partition they all write to interleaves their
     * outputs as they come; Kafka Streams' windowed count takes the greatest time it has seen as stream
     * time, so a task running ahead would close windows the others still have clicks for, and those
     * clicks would be dropped. Here each input partition's clicks queue up (each queue is in order, as its
     * partition is), and the earliest head goes on while every input partition not idle has one queued; a
     * partition with nothing queued for idleMs of wall-clock time no longer holds the others back (sluice's
     * idle_after). Also counts the clicks passed on and notes the windows each one enters, by the count's
     * own rule (a window takes a click unless its end + grace is at or before the greatest event time
     * seen), so the main thread knows which windows must still be published.
     */
    static final class InOrder implements FixedKeyProcessor<String, byte[], byte[]> {
        private final long idleMs;
        private FixedKeyProcessorContext<String, byte[]> context;
        private ArrayDeque<FixedKeyRecord<String, byte[]>>[] queues;
        private long[] lastArrival;
        private long observed = Long.MIN_VALUE;
        private long lastSlide = Long.MIN_VALUE;
        private boolean ending;

        InOrder(int partitions, long idleMs) {
            this.idleMs = idleMs;
            this.queues = newQueues(Math.max(1, partitions));
        }

        @SuppressWarnings({"unchecked", "rawtypes"})
        private static ArrayDeque<FixedKeyRecord<String, byte[]>>[] newQueues(int n) {
            ArrayDeque<FixedKeyRecord<String, byte[]>>[] q = new ArrayDeque[n];
            for (int i = 0; i < n; i++) {
                q[i] = new ArrayDeque<>();
            }
            return q;
        }

        @Override
        public void init(FixedKeyProcessorContext<String, byte[]> context) {
            this.context = context;
            lastArrival = new long[queues.length];
            Arrays.fill(lastArrival, context.currentSystemTimeMs());
        }

        @Override
        public void process(FixedKeyRecord<String, byte[]> record) {
            if (isEnd(record.value())) {
                ending = true;
            } else if (!isHeartbeat(record.value())) {
                queue(record);
                ARRIVED.incrementAndGet();
            }
            // With --expect: once the end marker and every click before it are here, nothing earlier can
            // come, so everything queued goes on. (Clicks go on only from here, never from a punctuator:
            // records passed on from a punctuator reach suppress's buffer without a source topic, and its
            // changelog fails on them; heartbeats bring the calls an idle input needs.)
            release(context.currentSystemTimeMs(), ending && ARRIVED.get() == PARSED.get());
        }

        private void queue(FixedKeyRecord<String, byte[]> record) {
            int p = partitionOf(record.value());
            long now = context.currentSystemTimeMs();
            if (p >= queues.length) { // the input topic got more partitions
                ArrayDeque<FixedKeyRecord<String, byte[]>>[] grown = newQueues(p + 1);
                System.arraycopy(queues, 0, grown, 0, queues.length);
                long[] arrivals = Arrays.copyOf(lastArrival, p + 1);
                Arrays.fill(arrivals, queues.length, p + 1, now);
                queues = grown;
                lastArrival = arrivals;
            }
            queues[p].add(record);
            lastArrival[p] = now;
        }

        /** Passes on the earliest queued click while every partition not idle has one queued (or all). */
        private void release(long now, boolean all) {
            while (true) {
                int next = -1;
                long nextTime = Long.MAX_VALUE;
                for (int p = 0; p < queues.length; p++) {
                    FixedKeyRecord<String, byte[]> head = queues[p].peek();
                    if (head == null) {
                        if (!all && now - lastArrival[p] < idleMs) {
                            return; // partition p may still send earlier clicks
                        }
                    } else if (head.timestamp() < nextTime) {
                        next = p;
                        nextTime = head.timestamp();
                    }
                }
                if (next < 0) {
                    return;
                }
                pass(queues[next].poll());
            }
        }

        private void pass(FixedKeyRecord<String, byte[]> record) {
            long t = record.timestamp();
            if (observed != Long.MIN_VALUE && t < observed - GRACE_MS) {
                LATE.incrementAndGet();
            }
            long slide = Math.floorDiv(t, SLIDE_MS) * SLIDE_MS;
            if (t > observed) {
                observed = t;
                OBSERVED.set(t);
            }
            if (slide != lastSlide || t < observed) {
                lastSlide = slide;
                long close = observed - GRACE_MS;
                for (long start = slide; start > t - WINDOW_MS && start >= 0; start -= SLIDE_MS) {
                    long end = start + WINDOW_MS;
                    if (end > close) {
                        OPEN_ENDS.add(end);
                    }
                }
            }
            COUNTED.incrementAndGet();
            context.forward(record.withValue(NO_VALUE));
        }
    }

    /** One item's final count in a window. */
    record ItemCount(String item, long clicks) {}

    /** Counts by clicks descending, then item ascending (in code points, as sluice compares UTF-8 bytes). */
    static final Comparator<ItemCount> RANKING = (a, b) -> {
        int byClicks = Long.compare(b.clicks(), a.clicks());
        if (byClicks != 0) {
            return byClicks;
        }
        String x = a.item();
        String y = b.item();
        int i = 0;
        int j = 0;
        while (i < x.length() && j < y.length()) {
            int cx = x.codePointAt(i);
            int cy = y.codePointAt(j);
            if (cx != cy) {
                return Integer.compare(cx, cy);
            }
            i += Character.charCount(cx);
            j += Character.charCount(cy);
        }
        return Integer.compare(x.length() - i, y.length() - j);
    };

    /** A window's final counts, as suppress gives them. */
    static final class Pending {
        final long start;
        final long end;
        final List<ItemCount> items = new ArrayList<>();

        Pending(long start, long end) {
            this.start = start;
            this.end = end;
        }
    }

    /**
     * Gathers each window's final counts (suppress gives a window's all at once, windows in order of end)
     * and publishes its top items: when counts of a later window arrive, and at every punctuation
     * (punctuations run between records and commits, never inside suppress's eviction, so whatever is
     * buffered then is whole).
     */
    static final class TopItems implements Processor<Windowed<String>, Long, String, String> {
        private ProcessorContext<String, String> context;
        private final TreeMap<Long, Pending> buffered = new TreeMap<>();

        @Override
        public void init(ProcessorContext<String, String> context) {
            this.context = context;
            context.schedule(Duration.ofMillis(1), PunctuationType.STREAM_TIME, t -> publishAll());
            context.schedule(Duration.ofMillis(10), PunctuationType.WALL_CLOCK_TIME, t -> publishAll());
        }

        @Override
        public void process(Record<Windowed<String>, Long> record) {
            Window window = record.key().window();
            long start = window.start();
            while (!buffered.isEmpty() && buffered.firstKey() < start) {
                publish(buffered.pollFirstEntry().getValue());
            }
            buffered.computeIfAbsent(start, s -> new Pending(s, window.end()))
                    .items.add(new ItemCount(record.key().key(), record.value()));
        }

        private void publishAll() {
            while (!buffered.isEmpty()) {
                publish(buffered.pollFirstEntry().getValue());
            }
        }

        private void publish(Pending window) {
            List<ItemCount> items = window.items;
            items.sort(RANKING);
            String key = Long.toString(window.start);
            int n = Math.min(TOP, items.size());
            for (int r = 0; r < n; r++) {
                ItemCount item = items.get(r);
                StringBuilder json = new StringBuilder(96)
                        .append("{\"window_start\":").append(window.start)
                        .append(",\"window_end\":").append(window.end)
                        .append(",\"rank\":").append(r + 1)
                        .append(",\"item\":");
                quote(json, item.item());
                json.append(",\"clicks\":").append(item.clicks()).append('}');
                context.forward(new Record<>(key, json.toString(), window.end));
            }
            OPEN_ENDS.remove(window.end);
            say("{\"window_end\":" + window.end + ",\"emitted_ms\":" + System.currentTimeMillis() + "}");
        }
    }

    static void quote(StringBuilder out, String s) {
        out.append('"');
        for (int i = 0; i < s.length(); i++) {
            char c = s.charAt(i);
            switch (c) {
                case '"' -> out.append("\\\"");
                case '\\' -> out.append("\\\\");
                case '\n' -> out.append("\\n");
                case '\r' -> out.append("\\r");
                case '\t' -> out.append("\\t");
                default -> {
                    if (c < 0x20) {
                        out.append(String.format("\\u%04x", (int) c));
                    } else {
                        out.append(c);
                    }
                }
            }
        }
        out.append('"');
    }

    // ---- the application ----

    static StreamsBuilder topology(String input, String output, int inputPartitions, long idleMs) {
        StreamsBuilder builder = new StreamsBuilder();
        builder.stream(input, Consumed.with(Serdes.ByteArray(), Serdes.ByteArray())
                        .withTimestampExtractor(new ClickTime())
                        .withName("clicks"))
                .process(Parse::new, Named.as("parse"))
                .repartition(Repartitioned.<String, byte[]>as("clicks-by-item")
                        .withKeySerde(Serdes.String())
                        .withValueSerde(Serdes.ByteArray())
                        .withNumberOfPartitions(1))
                .processValues(() -> new InOrder(inputPartitions, idleMs), Named.as("in-order"))
                .groupByKey(Grouped.with(Serdes.String(), Serdes.ByteArray()))
                .windowedBy(TimeWindows.ofSizeAndGrace(Duration.ofMillis(WINDOW_MS), Duration.ofMillis(GRACE_MS))
                        .advanceBy(Duration.ofMillis(SLIDE_MS)))
                .count(Named.as("count"), Materialized.<String, Long, WindowStore<Bytes, byte[]>>as("item-counts")
                        .withKeySerde(Serdes.String())
                        .withValueSerde(Serdes.Long()))
                .suppress(Suppressed.untilWindowCloses(Suppressed.BufferConfig.unbounded()).withName("final-counts"))
                .toStream(Named.as("closed"))
                .process(TopItems::new, Named.as("top-items"))
                .to(output, Produced.with(Serdes.String(), Serdes.String()).withName("top-items-out"));
        return builder;
    }

    /** Everything the caller wrote went through, and every window it closed was published. */
    static boolean complete(long expect) {
        long source = SOURCE.get();
        if (source < expect) {
            return false;
        }
        if (SETTLED.get() != source || COUNTED.get() != PARSED.get()) {
            return false;
        }
        long observed = OBSERVED.get();
        Long first = OPEN_ENDS.isEmpty() ? null : OPEN_ENDS.first();
        return first == null || observed == Long.MIN_VALUE || first + GRACE_MS > observed;
    }

    static void configureLogging() {
        ConfigurationBuilder<BuiltConfiguration> b = ConfigurationBuilderFactory.newConfigurationBuilder();
        b.setStatusLevel(Level.ERROR);
        b.setConfigurationName("stderr-warn");
        AppenderComponentBuilder stderr = b.newAppender("stderr", "Console")
                .addAttribute("target", ConsoleAppender.Target.SYSTEM_ERR);
        stderr.add(b.newLayout("PatternLayout").addAttribute("pattern", "%d{HH:mm:ss.SSS} %-5level %c{1} - %msg%n"));
        b.add(stderr);
        b.add(b.newRootLogger(Level.WARN).add(b.newAppenderRef("stderr")));
        // One warning per late click and window would swamp stderr and slow the run; they are counted
        // ("late" in the processed line) instead.
        b.add(b.newLogger("org.apache.kafka.streams.kstream.internals.KStreamWindowAggregate", Level.ERROR)
                .add(b.newAppenderRef("stderr")).addAttribute("additivity", false));
        Configurator.initialize(b.build());
    }

    private static void deleteTree(Path dir) {
        if (!Files.exists(dir)) {
            return;
        }
        try (Stream<Path> paths = Files.walk(dir)) {
            paths.sorted(Comparator.reverseOrder()).forEach(p -> {
                try {
                    Files.deleteIfExists(p);
                } catch (IOException e) {
                    throw new UncheckedIOException(e);
                }
            });
        } catch (IOException | UncheckedIOException e) {
            System.err.println("ClickstreamStreams: could not remove " + dir + ": " + e);
        }
    }

    private static int intArg(String name, String value) {
        try {
            int n = Integer.parseInt(value);
            if (n > 0) {
                return n;
            }
        } catch (NumberFormatException e) {
            // below
        }
        System.err.println("ClickstreamStreams: " + name + " wants a positive integer, not " + value);
        System.err.println(USAGE);
        System.exit(2);
        return 0;
    }

    public static void main(String[] args) throws Exception {
        configureLogging();
        List<String> positional = new ArrayList<>();
        int threads = 1;
        long expected = 0;
        long idleMs = 10_000;
        String stateDirArg = null;
        boolean exactlyOnce = false;
        for (int i = 0; i < args.length; i++) {
            String a = args[i];
            boolean hasValue = i + 1 < args.length;
            switch (a) {
                case "--threads" -> threads = intArg(a, hasValue ? args[++i] : "");
                case "--expect" -> expected = intArg(a, hasValue ? args[++i] : "");
                case "--idle-ms" -> idleMs = intArg(a, hasValue ? args[++i] : "");
                case "--state-dir" -> {
                    if (!hasValue) {
                        System.err.println(USAGE);
                        System.exit(2);
                    }
                    stateDirArg = args[++i];
                }
                case "--exactly-once" -> exactlyOnce = true;
                case "-h", "--help" -> {
                    System.err.println(USAGE);
                    System.exit(0);
                }
                default -> {
                    if (a.startsWith("--")) {
                        System.err.println("ClickstreamStreams: unknown option " + a);
                        System.err.println(USAGE);
                        System.exit(2);
                    }
                    positional.add(a);
                }
            }
        }
        if (positional.size() != 4) {
            System.err.println(USAGE);
            System.exit(2);
        }
        String bootstrap = positional.get(0);
        String input = positional.get(1);
        String output = positional.get(2);
        String appId = positional.get(3);

        int inputPartitions;
        Properties adminProps = new Properties();
        adminProps.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        try (Admin admin = Admin.create(adminProps)) {
            inputPartitions = admin.describeTopics(List.of(input)).allTopicNames().get(30, TimeUnit.SECONDS)
                    .get(input).partitions().size();
        } catch (Exception e) {
            System.err.println("ClickstreamStreams: cannot describe topic " + input + ": " + e);
            System.exit(1);
            return;
        }

        Path tempState = stateDirArg == null ? Files.createTempDirectory("clickstream-streams-") : null;
        String stateDir = stateDirArg != null ? stateDirArg : tempState.toString();

        Properties props = new Properties();
        props.put(StreamsConfig.APPLICATION_ID_CONFIG, appId);
        props.put(StreamsConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        props.put(StreamsConfig.NUM_STREAM_THREADS_CONFIG, threads);
        props.put(StreamsConfig.COMMIT_INTERVAL_MS_CONFIG, 100);
        props.put(StreamsConfig.STATE_DIR_CONFIG, stateDir);
        props.put(StreamsConfig.PROCESSING_GUARANTEE_CONFIG,
                exactlyOnce ? StreamsConfig.EXACTLY_ONCE_V2 : StreamsConfig.AT_LEAST_ONCE);
        props.put(StreamsConfig.consumerPrefix(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG), "earliest");

        expect = expected;
        KafkaStreams streams = new KafkaStreams(topology(input, output, inputPartitions, idleMs).build(), props);
        AtomicBoolean started = new AtomicBoolean();
        streams.setStateListener((now, before) -> {
            if (now == KafkaStreams.State.RUNNING && started.compareAndSet(false, true)) {
                say("{\"started_ms\":" + System.currentTimeMillis() + "}");
            }
        });
        streams.setUncaughtExceptionHandler(e -> {
            System.err.println("ClickstreamStreams: stream thread failed: " + e);
            e.printStackTrace();
            return StreamsUncaughtExceptionHandler.StreamThreadExceptionResponse.SHUTDOWN_CLIENT;
        });

        AtomicBoolean closed = new AtomicBoolean();
        Runnable shutdown = () -> {
            if (closed.compareAndSet(false, true)) {
                streams.close(Duration.ofSeconds(30));
                if (tempState != null) {
                    deleteTree(tempState);
                }
            }
        };
        Runtime.getRuntime().addShutdownHook(new Thread(shutdown, "clickstream-shutdown"));

        streams.start();
        while (true) {
            KafkaStreams.State state = streams.state();
            if (closed.get()) {
                return; // shutting down on a signal
            }
            if (state == KafkaStreams.State.ERROR || state == KafkaStreams.State.PENDING_ERROR
                    || state == KafkaStreams.State.NOT_RUNNING) {
                System.err.println("ClickstreamStreams: the application stopped (" + state + ")");
                shutdown.run();
                System.exit(1);
            }
            if (expect > 0 && complete(expect)) {
                long last = System.currentTimeMillis();
                long first = FIRST_MS.get();
                say(String.format(Locale.ROOT,
                        "{\"processed\":%d,\"seconds\":%.3f,\"first_ms\":%d,\"last_ms\":%d,\"unparsable\":%d,\"late\":%d}",
                        SOURCE.get(), (last - first) / 1000.0, first, last, UNPARSABLE.get(), LATE.get()));
                shutdown.run();
                System.exit(0);
            }
            Thread.sleep(5);
        }
    }
}
