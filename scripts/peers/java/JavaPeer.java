// JavaPeer: the Apache Kafka Java client (kafka-clients 4.4) as a command-line peer, for sluice's
// interop tests (records written by one client and read by the other, field by field; consumer
// groups shared between them) and benchmarks (the Java client's throughput and CPU cost).
//
// Compiled by scripts/install-peers.sh into .peers/java/classes and run as
//     .peers/bin/java-peer JavaPeer COMMAND ...
// or  java -cp '.peers/java/classes:.peers/kafka/lib/*' JavaPeer COMMAND ...
// (run without arguments for the commands). Results go to stdout, one JSON object a line, bytes in
// standard base64; diagnostics and the client's logs go to stderr. Exit 0 on success, 1 on failure,
// 2 on bad usage.

import com.sun.management.OperatingSystemMXBean;
import java.io.BufferedOutputStream;
import java.io.BufferedReader;
import java.io.FileDescriptor;
import java.io.FileOutputStream;
import java.io.IOException;
import java.io.InputStreamReader;
import java.io.PrintStream;
import java.lang.management.ManagementFactory;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Base64;
import java.util.Collection;
import java.util.Collections;
import java.util.Comparator;
import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.Properties;
import java.util.Queue;
import java.util.Random;
import java.util.Set;
import java.util.concurrent.ConcurrentLinkedQueue;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.concurrent.atomic.AtomicLong;
import java.util.concurrent.atomic.AtomicReference;
import java.util.stream.Collectors;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.consumer.ConsumerRebalanceListener;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.ConsumerRecords;
import org.apache.kafka.clients.consumer.CooperativeStickyAssignor;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.clients.consumer.OffsetAndMetadata;
import org.apache.kafka.clients.consumer.RangeAssignor;
import org.apache.kafka.clients.consumer.RoundRobinAssignor;
import org.apache.kafka.clients.producer.Callback;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.clients.producer.RecordMetadata;
import org.apache.kafka.common.PartitionInfo;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.header.Header;
import org.apache.kafka.common.header.internals.RecordHeader;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;
import org.apache.kafka.common.serialization.ByteArraySerializer;

public final class JavaPeer {
    private static final String USAGE = """
        usage: JavaPeer COMMAND ARGS...   (BOOTSTRAP is host:port[,host:port...])
          produce BOOTSTRAP TOPIC COUNT [--codec none|gzip|snappy|lz4|zstd] [--partitions N]
                  [--idempotent] [--transactional-id ID] [--txn-size K] [--abort-every M]
                  [--base-timestamp MS]
              COUNT test records of varied shape, record i to partition i % N; one line each
              (in index order) with where it went and what it held, then {"done":true,...}
          consume BOOTSTRAP TOPIC [--count N] [--read-committed] [--timeout-ms T]
              every partition from the beginning, until N records or the end offsets at start
          group-member BOOTSTRAP TOPIC GROUP [--protocol classic|consumer]
                  [--assignor range|roundrobin|cooperative-sticky]
              a group member printing its assignments and records until a line (or EOF) on stdin
          perf-produce BOOTSTRAP TOPIC COUNT SIZE [--codec C] [--linger-ms L] [--batch-size B]
                  [--acks all|1|0] [--idempotent true|false]
          perf-consume BOOTSTRAP TOPIC COUNT [--fetch-max-bytes B] [--max-partition-fetch-bytes B]
              throughput and CPU time of the Java producer / consumer
        """;

    private static final long DEFAULT_BASE_TIMESTAMP = 1_700_000_000_000L;
    private static final Duration POLL = Duration.ofMillis(100);
    private static final long PERF_CONSUME_TIMEOUT_MS = 120_000;

    /** The real stdout, for results only; System.out is pointed at stderr so nothing else lands there. */
    private static final PrintStream OUT = new PrintStream(
        new BufferedOutputStream(new FileOutputStream(FileDescriptor.out), 1 << 16), false, StandardCharsets.UTF_8);

    public static void main(String[] argv) {
        quietLogging();
        if (argv.length == 0) {
            System.err.print(USAGE);
            System.exit(2);
        }
        try {
            switch (argv[0]) {
                case "produce" -> produce(argv);
                case "consume" -> consume(argv);
                case "group-member" -> groupMember(argv);
                case "perf-produce" -> perfProduce(argv);
                case "perf-consume" -> perfConsume(argv);
                default -> throw new UsageException("unknown command '" + argv[0] + "'");
            }
        } catch (Failure e) {
            System.err.println("JavaPeer " + argv[0] + ": " + e.getMessage());
            System.exit(1);
        } catch (UsageException e) {
            System.err.println("JavaPeer: " + e.getMessage());
            System.err.print(USAGE);
            System.exit(2);
        } catch (Exception e) {
            System.err.println("JavaPeer " + argv[0] + ": " + describe(e));
            System.exit(1);
        }
        System.exit(0);
    }

    /** Keeps the client's logging off stdout and quiet below WARN (log4j2 has no configuration here). */
    private static void quietLogging() {
        if (System.getProperty("log4j2.level") == null) {
            System.setProperty("log4j2.level", "WARN");
        }
        System.setOut(System.err);
    }

    private static String describe(Throwable e) {
        StringBuilder text = new StringBuilder(e.toString());
        for (Throwable cause = e.getCause(); cause != null; cause = cause.getCause()) {
            text.append(" (caused by ").append(cause).append(')');
        }
        return text.toString();
    }

    // ------------------------------------------------------------------------------------ produce

    /** One sent record: its index, what it held, where it went, and whether its transaction committed. */
    private record Sent(int index, ProducerRecord<byte[], byte[]> record, RecordMetadata metadata, boolean committed) {}

    private static void produce(String[] argv) {
        Args args = new Args(argv, Set.of("--idempotent"), Set.of("--codec", "--partitions", "--transactional-id",
            "--txn-size", "--abort-every", "--base-timestamp"));
        args.expectPositional("BOOTSTRAP TOPIC COUNT");
        String topic = args.positional(1);
        int count = args.positionalInt(2);
        int partitions = args.intOption("--partitions", 1);
        long base = args.longOption("--base-timestamp", DEFAULT_BASE_TIMESTAMP);
        String transactionalId = args.option("--transactional-id", null);
        int txnSize = args.intOption("--txn-size", 10);
        int abortEvery = args.intOption("--abort-every", 0);
        if (partitions < 1 || txnSize < 1) {
            throw new UsageException("produce: --partitions and --txn-size must be at least 1");
        }

        Properties props = producerProps(args.positional(0), args.option("--codec", "none"));
        props.put(ProducerConfig.ACKS_CONFIG, "all");
        if (transactionalId != null) {
            props.put(ProducerConfig.TRANSACTIONAL_ID_CONFIG, transactionalId);
        } else {
            props.put(ProducerConfig.ENABLE_IDEMPOTENCE_CONFIG, args.has("--idempotent"));
        }
        double seconds;
        List<Sent> sent;
        try (KafkaProducer<byte[], byte[]> producer = new KafkaProducer<>(props)) {
            int actual = producer.partitionsFor(topic).size();
            if (actual < partitions) {
                throw new Failure("topic " + topic + " has " + actual + " partitions, fewer than --partitions " + partitions);
            }
            TestSender sender = new TestSender(producer, topic, partitions, base);
            long start = System.nanoTime();
            if (transactionalId == null) {
                sender.send(0, count, true);
                producer.flush();
            } else {
                sendTransactions(producer, sender, count, txnSize, abortEvery);
            }
            seconds = secondsSince(start);
            sent = sender.results();
        }
        sent.forEach(s -> emit(sentJson(s)));
        emit(new Json().put("done", true).put("records", count).put("seconds", seconds));
    }

    /** COUNT records in transactions of TXN_SIZE; transactions ABORT_EVERY, 2 * ABORT_EVERY, ... are aborted. */
    private static void sendTransactions(KafkaProducer<byte[], byte[]> producer, TestSender sender, int count,
                                         int txnSize, int abortEvery) {
        producer.initTransactions();
        for (int first = 0, txn = 1; first < count; first += txnSize, txn++) {
            boolean commit = abortEvery == 0 || txn % abortEvery != 0;
            producer.beginTransaction();
            sender.send(first, Math.min(first + txnSize, count), commit);
            producer.flush();
            if (commit) {
                producer.commitTransaction();
            } else {
                producer.abortTransaction();
            }
        }
    }

    /** Sends records of the test sequence and collects what their callbacks report. */
    private static final class TestSender {
        private final KafkaProducer<byte[], byte[]> producer;
        private final String topic;
        private final int partitions;
        private final long baseTimestamp;
        private final Queue<Sent> sent = new ConcurrentLinkedQueue<>();
        private final AtomicReference<Exception> failure = new AtomicReference<>();

        TestSender(KafkaProducer<byte[], byte[]> producer, String topic, int partitions, long baseTimestamp) {
            this.producer = producer;
            this.topic = topic;
            this.partitions = partitions;
            this.baseTimestamp = baseTimestamp;
        }

        /** Sends records FROM (inclusive) to TO (exclusive), to be reported as committed or not. */
        void send(int from, int to, boolean committed) {
            for (int i = from; i < to; i++) {
                int index = i;
                ProducerRecord<byte[], byte[]> record = testRecord(topic, i, partitions, baseTimestamp);
                producer.send(record, (metadata, error) -> {
                    if (error != null) {
                        failure.compareAndSet(null, error);
                    } else {
                        sent.add(new Sent(index, record, metadata, committed));
                    }
                });
            }
        }

        /** Every record's outcome in index order; only once all sends completed (after a flush). */
        List<Sent> results() {
            if (failure.get() != null) {
                throw new Failure("a send failed: " + describe(failure.get()));
            }
            return sent.stream().sorted(Comparator.comparingInt(Sent::index)).toList();
        }
    }

    /** Record i of the test sequence: every combination of null, empty and filled keys, values and headers. */
    private static ProducerRecord<byte[], byte[]> testRecord(String topic, int i, int partitions, long base) {
        List<Header> headers = new ArrayList<>();
        headers.add(new RecordHeader("trace", utf8("t-" + i)));
        if (i % 2 == 0) {
            headers.add(new RecordHeader("dup", utf8("a")));
            headers.add(new RecordHeader("dup", utf8("b")));
        }
        if (i % 3 == 0) {
            headers.add(new RecordHeader("empty", new byte[0]));
            headers.add(new RecordHeader("null", null));
        }
        return new ProducerRecord<>(topic, i % partitions, base + i * 10L, testKey(i), testValue(i), headers);
    }

    private static byte[] testKey(int i) {
        if (i % 10 == 3) {
            return null;
        }
        return utf8((i % 7 == 0 ? "clé-" : "key-") + i);
    }

    private static byte[] testValue(int i) {
        if (i % 10 == 5) {
            return null;
        }
        if (i % 10 == 6) {
            return new byte[0];
        }
        byte[] text = utf8("value " + i + " " + String.join(" ", Collections.nCopies(i % 13, "filler")));
        if (i % 11 != 0) {
            return text;
        }
        byte[] raw = new byte[] {(byte) 0xff, 0x00, (byte) 0xfe};
        byte[] value = new byte[text.length + raw.length];
        System.arraycopy(text, 0, value, 0, text.length);
        System.arraycopy(raw, 0, value, text.length, raw.length);
        return value;
    }

    private static Json sentJson(Sent s) {
        return new Json()
            .put("i", s.index())
            .put("partition", s.metadata().partition())
            .put("offset", s.metadata().offset())
            .put("timestamp", s.metadata().timestamp())
            .put("key", base64(s.record().key()))
            .put("value", base64(s.record().value()))
            .putRaw("headers", headersJson(s.record().headers()))
            .put("committed", s.committed());
    }

    // ------------------------------------------------------------------------------------ consume

    private static void consume(String[] argv) {
        Args args = new Args(argv, Set.of("--read-committed"), Set.of("--count", "--timeout-ms"));
        args.expectPositional("BOOTSTRAP TOPIC");
        String topic = args.positional(1);
        Integer count = args.has("--count") ? args.intOption("--count", 0) : null;
        long timeoutMs = args.longOption("--timeout-ms", 30_000);

        Properties props = consumerProps(args.positional(0));
        props.put(ConsumerConfig.ISOLATION_LEVEL_CONFIG, args.has("--read-committed") ? "read_committed" : "read_uncommitted");
        int read = 0;
        try (KafkaConsumer<byte[], byte[]> consumer = new KafkaConsumer<>(props)) {
            List<TopicPartition> partitions = assignAll(consumer, topic);
            Map<TopicPartition, Long> end = consumer.endOffsets(partitions);
            long deadline = System.currentTimeMillis() + timeoutMs;
            while (count != null ? read < count : !reached(consumer, end)) {
                if (System.currentTimeMillis() > deadline) {
                    throw new Failure("timed out after reading " + read + " records"
                        + (count != null ? " of " + count : " (the end offsets at start were " + end + ")"));
                }
                for (ConsumerRecord<byte[], byte[]> record : consumer.poll(POLL)) {
                    if (count != null && read == count) {
                        break;
                    }
                    emit(recordJson(record));
                    read++;
                }
            }
        }
        emit(new Json().put("done", true).put("records", read));
    }

    private static boolean reached(KafkaConsumer<?, ?> consumer, Map<TopicPartition, Long> end) {
        return end.entrySet().stream().allMatch(e -> consumer.position(e.getKey()) >= e.getValue());
    }

    private static Json recordJson(ConsumerRecord<byte[], byte[]> record) {
        return new Json()
            .put("partition", record.partition())
            .put("offset", record.offset())
            .put("timestamp", record.timestamp())
            .put("timestamp_type", record.timestampType().name)
            .put("key", base64(record.key()))
            .put("value", base64(record.value()))
            .putRaw("headers", headersJson(record.headers()));
    }

    // ------------------------------------------------------------------------------- group-member

    private static void groupMember(String[] argv) {
        Args args = new Args(argv, Set.of(), Set.of("--protocol", "--assignor"));
        args.expectPositional("BOOTSTRAP TOPIC GROUP");
        String protocol = args.option("--protocol", "classic");
        Properties props = consumerProps(args.positional(0));
        props.put(ConsumerConfig.GROUP_ID_CONFIG, args.positional(2));
        props.put(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG, "earliest");
        props.put(ConsumerConfig.GROUP_PROTOCOL_CONFIG, protocol);
        switch (protocol) {
            case "classic" -> {
                // The consumer protocol rejects these: the broker owns sessions and assignment there.
                props.put(ConsumerConfig.SESSION_TIMEOUT_MS_CONFIG, 10_000);
                props.put(ConsumerConfig.HEARTBEAT_INTERVAL_MS_CONFIG, 500);
                props.put(ConsumerConfig.PARTITION_ASSIGNMENT_STRATEGY_CONFIG, assignorClass(args.option("--assignor", "range")));
            }
            case "consumer" -> {
                if (args.has("--assignor")) {
                    System.err.println("JavaPeer group-member: --assignor ignored with --protocol consumer (the broker assigns)");
                }
            }
            default -> throw new UsageException("--protocol must be classic or consumer, not '" + protocol + "'");
        }

        AtomicBoolean stop = new AtomicBoolean();
        Thread stdin = new Thread(() -> awaitLine(stop), "stdin");
        stdin.setDaemon(true);
        stdin.start();
        try (KafkaConsumer<byte[], byte[]> consumer = new KafkaConsumer<>(props)) {
            PrintingListener listener = new PrintingListener(consumer);
            consumer.subscribe(List.of(args.positional(1)), listener);
            while (!stop.get()) {
                ConsumerRecords<byte[], byte[]> records = consumer.poll(POLL);
                listener.consumed.putAll(records.nextOffsets());
                for (ConsumerRecord<byte[], byte[]> record : records) {
                    emit(new Json().put("value", text(record.value())).put("partition", record.partition())
                        .put("offset", record.offset()));
                }
                if (!records.isEmpty()) {
                    consumer.commitSync(records.nextOffsets());
                }
            }
            consumer.commitSync();
        }
        emit(new Json().put("closed", true));
    }

    private static String assignorClass(String name) {
        return switch (name) {
            case "range" -> RangeAssignor.class.getName();
            case "roundrobin" -> RoundRobinAssignor.class.getName();
            case "cooperative-sticky" -> CooperativeStickyAssignor.class.getName();
            default -> throw new UsageException("--assignor must be range, roundrobin or cooperative-sticky, not '" + name + "'");
        };
    }

    /** Sets stop once a line (or end of input) arrives on stdin. */
    private static void awaitLine(AtomicBoolean stop) {
        try (BufferedReader in = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8))) {
            in.readLine();
        } catch (IOException e) {
            System.err.println("JavaPeer group-member: reading stdin: " + e);
        }
        stop.set(true);
    }

    /**
     * Prints each assignment change; commits what was consumed from revoked partitions before they
     * go. (Not `position()`: the consumer-protocol consumer cannot look a position up in a
     * revocation callback while it closes, and blocks until its timeout.)
     */
    private static final class PrintingListener implements ConsumerRebalanceListener {
        private final KafkaConsumer<byte[], byte[]> consumer;
        /** The offset after the last record consumed, by partition. */
        final Map<TopicPartition, OffsetAndMetadata> consumed = new HashMap<>();

        PrintingListener(KafkaConsumer<byte[], byte[]> consumer) {
            this.consumer = consumer;
        }

        @Override
        public void onPartitionsRevoked(Collection<TopicPartition> partitions) {
            Map<TopicPartition, OffsetAndMetadata> offsets = new HashMap<>();
            for (TopicPartition partition : partitions) {
                OffsetAndMetadata next = consumed.remove(partition);
                if (next != null) {
                    offsets.put(partition, next);
                }
            }
            if (!offsets.isEmpty()) {
                consumer.commitSync(offsets);
            }
            emit(new Json().putRaw("revoked", partitionList(partitions)));
        }

        @Override
        public void onPartitionsAssigned(Collection<TopicPartition> partitions) {
            // Cooperative rebalances pass only the added partitions: print the whole assignment.
            emit(new Json().putRaw("assigned", partitionList(consumer.assignment())));
        }

        @Override
        public void onPartitionsLost(Collection<TopicPartition> partitions) {
            // Already owned by another member: nothing may be committed for them.
            emit(new Json().putRaw("lost", partitionList(partitions)));
        }
    }

    private static String partitionList(Collection<TopicPartition> partitions) {
        return partitions.stream().map(TopicPartition::partition).sorted().map(String::valueOf)
            .collect(Collectors.joining(",", "[", "]"));
    }

    // ------------------------------------------------------------------------------- perf-produce

    private static void perfProduce(String[] argv) {
        Args args = new Args(argv, Set.of(), Set.of("--codec", "--linger-ms", "--batch-size", "--acks", "--idempotent"));
        args.expectPositional("BOOTSTRAP TOPIC COUNT SIZE");
        String topic = args.positional(1);
        long count = args.positionalLong(2);
        int size = args.positionalInt(3);

        Properties props = producerProps(args.positional(0), args.option("--codec", "none"));
        props.put(ProducerConfig.LINGER_MS_CONFIG, args.intOption("--linger-ms", 5));
        props.put(ProducerConfig.BATCH_SIZE_CONFIG, args.intOption("--batch-size", 1 << 20));
        props.put(ProducerConfig.BUFFER_MEMORY_CONFIG, 64L << 20);
        props.put(ProducerConfig.ACKS_CONFIG, args.option("--acks", "all"));
        props.put(ProducerConfig.ENABLE_IDEMPOTENCE_CONFIG, args.booleanOption("--idempotent", true));

        byte[] value = printableBytes(size);
        AtomicLong errors = new AtomicLong();
        AtomicReference<Exception> firstError = new AtomicReference<>();
        Callback callback = (metadata, error) -> {
            if (error != null) {
                errors.incrementAndGet();
                firstError.compareAndSet(null, error);
            }
        };
        Stopwatch watch;
        try (KafkaProducer<byte[], byte[]> producer = new KafkaProducer<>(props)) {
            producer.partitionsFor(topic); // metadata before the clock starts
            watch = new Stopwatch();
            for (long i = 0; i < count; i++) {
                producer.send(new ProducerRecord<>(topic, null, value), callback);
            }
            producer.flush();
            watch.stop();
        }
        emit(watch.report(count, count * size).put("errors", errors.get()));
        if (errors.get() > 0) {
            throw new Failure(errors.get() + " sends failed, the first: " + describe(firstError.get()));
        }
    }

    /** SIZE pseudo-random printable ASCII bytes (a fixed seed: the same every run). */
    private static byte[] printableBytes(int size) {
        Random random = new Random(42);
        byte[] bytes = new byte[size];
        for (int i = 0; i < size; i++) {
            bytes[i] = (byte) (' ' + 1 + random.nextInt('~' - ' '));
        }
        return bytes;
    }

    // ------------------------------------------------------------------------------- perf-consume

    private static void perfConsume(String[] argv) {
        Args args = new Args(argv, Set.of(), Set.of("--fetch-max-bytes", "--max-partition-fetch-bytes"));
        args.expectPositional("BOOTSTRAP TOPIC COUNT");
        String topic = args.positional(1);
        long count = args.positionalLong(2);

        Properties props = consumerProps(args.positional(0));
        props.put(ConsumerConfig.FETCH_MAX_BYTES_CONFIG, args.intOption("--fetch-max-bytes", 52_428_800));
        props.put(ConsumerConfig.MAX_PARTITION_FETCH_BYTES_CONFIG, args.intOption("--max-partition-fetch-bytes", 4 << 20));
        props.put(ConsumerConfig.MAX_POLL_RECORDS_CONFIG, 10_000);
        props.put(ConsumerConfig.FETCH_MIN_BYTES_CONFIG, 1);
        props.put(ConsumerConfig.RECEIVE_BUFFER_CONFIG, 1 << 20);

        long read = 0;
        long bytes = 0;
        Stopwatch watch;
        try (KafkaConsumer<byte[], byte[]> consumer = new KafkaConsumer<>(props)) {
            assignAll(consumer, topic);
            watch = new Stopwatch();
            long deadline = System.currentTimeMillis() + PERF_CONSUME_TIMEOUT_MS;
            while (read < count) {
                if (System.currentTimeMillis() > deadline) {
                    throw new Failure("timed out after " + PERF_CONSUME_TIMEOUT_MS + " ms with "
                        + read + " of " + count + " records");
                }
                for (ConsumerRecord<byte[], byte[]> record : consumer.poll(POLL)) {
                    if (read == count) {
                        break;
                    }
                    read++;
                    bytes += record.value() == null ? 0 : record.value().length;
                }
            }
            watch.stop();
        }
        emit(watch.report(read, bytes));
    }

    /** Wall-clock and process CPU time (all threads) between its creation and stop(). */
    private static final class Stopwatch {
        private static final OperatingSystemMXBean OS =
            (OperatingSystemMXBean) ManagementFactory.getOperatingSystemMXBean();
        private final long startNanos = System.nanoTime();
        private final long startCpuNanos = OS.getProcessCpuTime();
        private double seconds;
        private double cpuSeconds;

        void stop() {
            seconds = secondsSince(startNanos);
            cpuSeconds = (OS.getProcessCpuTime() - startCpuNanos) / 1e9;
        }

        Json report(long records, long bytes) {
            return new Json()
                .put("records", records)
                .put("bytes", bytes)
                .put("seconds", seconds)
                .put("records_per_second", seconds > 0 ? records / seconds : 0.0)
                .put("cpu_seconds", cpuSeconds);
        }
    }

    // ---------------------------------------------------------------------------- client settings

    private static Properties producerProps(String bootstrap, String codec) {
        if (!List.of("none", "gzip", "snappy", "lz4", "zstd").contains(codec)) {
            throw new UsageException("--codec must be none, gzip, snappy, lz4 or zstd, not '" + codec + "'");
        }
        Properties props = new Properties();
        props.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        props.put(ProducerConfig.KEY_SERIALIZER_CLASS_CONFIG, ByteArraySerializer.class.getName());
        props.put(ProducerConfig.VALUE_SERIALIZER_CLASS_CONFIG, ByteArraySerializer.class.getName());
        props.put(ProducerConfig.COMPRESSION_TYPE_CONFIG, codec);
        return props;
    }

    private static Properties consumerProps(String bootstrap) {
        Properties props = new Properties();
        props.put(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        props.put(ConsumerConfig.KEY_DESERIALIZER_CLASS_CONFIG, ByteArrayDeserializer.class.getName());
        props.put(ConsumerConfig.VALUE_DESERIALIZER_CLASS_CONFIG, ByteArrayDeserializer.class.getName());
        props.put(ConsumerConfig.ENABLE_AUTO_COMMIT_CONFIG, false);
        return props;
    }

    /** Assigns every partition of TOPIC to the consumer, each read from its beginning. */
    private static List<TopicPartition> assignAll(KafkaConsumer<?, ?> consumer, String topic) {
        List<TopicPartition> partitions = new ArrayList<>();
        for (PartitionInfo info : consumer.partitionsFor(topic)) {
            partitions.add(new TopicPartition(topic, info.partition()));
        }
        if (partitions.isEmpty()) {
            throw new Failure("topic " + topic + " not found");
        }
        consumer.assign(partitions);
        consumer.seekToBeginning(partitions);
        return partitions;
    }

    // ------------------------------------------------------------------------------------- output

    private static void emit(Json line) {
        OUT.println(line);
        OUT.flush();
    }

    private static double secondsSince(long startNanos) {
        return (System.nanoTime() - startNanos) / 1e9;
    }

    private static byte[] utf8(String text) {
        return text.getBytes(StandardCharsets.UTF_8);
    }

    private static String text(byte[] bytes) {
        return bytes == null ? null : new String(bytes, StandardCharsets.UTF_8);
    }

    private static String base64(byte[] bytes) {
        return bytes == null ? null : Base64.getEncoder().encodeToString(bytes);
    }

    /** [[key, base64 value or null], ...] in the record's order. */
    private static String headersJson(Iterable<Header> headers) {
        List<String> pairs = new ArrayList<>();
        for (Header header : headers) {
            pairs.add("[" + Json.quote(header.key()) + "," + Json.quote(base64(header.value())) + "]");
        }
        return "[" + String.join(",", pairs) + "]";
    }

    /** A JSON object written field by field, in insertion order. */
    private static final class Json {
        private final Map<String, String> fields = new LinkedHashMap<>();

        Json put(String name, String value) {
            return putRaw(name, quote(value));
        }

        Json put(String name, long value) {
            return putRaw(name, Long.toString(value));
        }

        Json put(String name, double value) {
            return putRaw(name, String.format(Locale.ROOT, "%.6f", value));
        }

        Json put(String name, boolean value) {
            return putRaw(name, Boolean.toString(value));
        }

        Json putRaw(String name, String json) {
            fields.put(name, json);
            return this;
        }

        @Override
        public String toString() {
            return fields.entrySet().stream().map(e -> quote(e.getKey()) + ":" + e.getValue())
                .collect(Collectors.joining(",", "{", "}"));
        }

        static String quote(String text) {
            if (text == null) {
                return "null";
            }
            StringBuilder out = new StringBuilder(text.length() + 2).append('"');
            for (int i = 0; i < text.length(); i++) {
                char c = text.charAt(i);
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
            return out.append('"').toString();
        }
    }

    // -------------------------------------------------------------------------------- arguments

    /** A command's arguments: positionals in order, and --options (flags, or options taking a value). */
    private static final class Args {
        private final String command;
        private final List<String> positional = new ArrayList<>();
        private final Map<String, String> options = new HashMap<>();

        Args(String[] argv, Set<String> flags, Set<String> valued) {
            command = argv[0];
            for (int i = 1; i < argv.length; i++) {
                String arg = argv[i];
                if (flags.contains(arg)) {
                    options.put(arg, "true");
                } else if (valued.contains(arg)) {
                    if (i + 1 == argv.length) {
                        throw new UsageException(command + ": " + arg + " needs a value");
                    }
                    options.put(arg, argv[++i]);
                } else if (arg.startsWith("--")) {
                    throw new UsageException(command + ": unknown option " + arg);
                } else {
                    positional.add(arg);
                }
            }
        }

        /** Checks there are exactly the positionals NAMES (space-separated) lists. */
        void expectPositional(String names) {
            if (positional.size() != names.split(" ").length) {
                throw new UsageException(command + " takes " + names + ", got " + positional);
            }
        }

        String positional(int index) {
            return positional.get(index);
        }

        int positionalInt(int index) {
            return (int) number(positional(index), "argument " + (index + 1), Integer.MAX_VALUE);
        }

        long positionalLong(int index) {
            return number(positional(index), "argument " + (index + 1), Long.MAX_VALUE);
        }

        boolean has(String name) {
            return options.containsKey(name);
        }

        String option(String name, String fallback) {
            return options.getOrDefault(name, fallback);
        }

        int intOption(String name, int fallback) {
            return has(name) ? (int) number(option(name, null), name, Integer.MAX_VALUE) : fallback;
        }

        long longOption(String name, long fallback) {
            return has(name) ? number(option(name, null), name, Long.MAX_VALUE) : fallback;
        }

        boolean booleanOption(String name, boolean fallback) {
            return switch (option(name, String.valueOf(fallback))) {
                case "true" -> true;
                case "false" -> false;
                default -> throw new UsageException(command + ": " + name + " must be true or false");
            };
        }

        private long number(String text, String what, long max) {
            try {
                long value = Long.parseLong(text);
                if (value < 0 || value > max) {
                    throw new NumberFormatException();
                }
                return value;
            } catch (NumberFormatException e) {
                throw new UsageException(command + ": " + what + " must be a number from 0 to " + max + ", not '" + text + "'");
            }
        }
    }

    /** Bad arguments: the message, then the usage. */
    private static final class UsageException extends RuntimeException {
        UsageException(String message) {
            super(message);
        }
    }

    /** A run that went wrong in a way its message says in full. */
    private static final class Failure extends RuntimeException {
        Failure(String message) {
            super(message);
        }
    }
}
