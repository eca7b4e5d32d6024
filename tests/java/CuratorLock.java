// A real Apache Curator client for the tests: takes an InterProcessMutex and holds it
// until a line (or end of input) arrives on stdin.
//   java -cp /usr/share/java/curator-recipes.jar:<dir> CuratorLock <connect> <path>
// Prints WAITING before it asks for the lock, HELD once it holds it, RELEASED at the end.
import java.io.BufferedReader;
import java.io.InputStreamReader;
import org.apache.curator.framework.CuratorFramework;
import org.apache.curator.framework.CuratorFrameworkFactory;
import org.apache.curator.framework.recipes.locks.InterProcessMutex;
import org.apache.curator.retry.RetryOneTime;

public class CuratorLock {
    public static void main(String[] args) throws Exception {
        CuratorFramework client = CuratorFrameworkFactory.builder()
            .connectString(args[0]).retryPolicy(new RetryOneTime(100))
            .sessionTimeoutMs(2000).connectionTimeoutMs(5000).build();
        client.start();
        client.blockUntilConnected();
        InterProcessMutex mutex = new InterProcessMutex(client, args[1]);
        System.out.println("WAITING");
        System.out.flush();
        mutex.acquire();
        System.out.println("HELD");
        System.out.flush();
        new BufferedReader(new InputStreamReader(System.in)).readLine();
        mutex.release();
        System.out.println("RELEASED");
        System.out.flush();
        client.close();
    }
}
