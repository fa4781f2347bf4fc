"""Starts edge-agent next to the robot's ROS 2 nodes.

    ros2 launch edge_agent edge_agent.launch.py config_file:=/etc/edge-agent/agent.toml
    ros2 launch edge_agent edge_agent.launch.py node_name:=cloud_link namespace:=/picker07

(`edge_agent` is found once /usr/share/edge-agent/ros, where the Debian package puts it,
is on AMENT_PREFIX_PATH; `ros2 launch <path>/edge_agent.launch.py` works without.)

The agent is a plain executable (not built with colcon), so it is started as a process
with the ROS arguments ros2 launch would give a node: the node name and namespace remaps
and the config_file parameter. It is started again 5 s after it fails, as systemd does,
except after a configuration error (exit code 64), which restarting cannot fix. The
executable hands over to the agent of the active OTA slot when that slot carries one
(docs/ota.md, "Programs and the agent itself"); the restarts here count its starts.
"""

from launch import LaunchDescription
from launch.actions import (DeclareLaunchArgument, ExecuteProcess, LogInfo, OpaqueFunction,
                            RegisterEventHandler, TimerAction)
from launch.event_handlers import OnProcessExit
from launch.substitutions import LaunchConfiguration

# The agent's exit code for a bad configuration or bad usage (sysexits EX_USAGE).
CONFIGURATION_ERROR = 64
RESTART_DELAY = 5.0


def _agent(context):
    executable = LaunchConfiguration("executable").perform(context)
    config_file = LaunchConfiguration("config_file").perform(context)
    node_name = LaunchConfiguration("node_name").perform(context)
    namespace = LaunchConfiguration("namespace").perform(context)
    cmd = [executable, "run", "--ros-args", "-r", f"__node:={node_name}", "-p", f"config_file:={config_file}"]
    if namespace:
        cmd += ["-r", f"__ns:={namespace}"]

    def start():
        proc = ExecuteProcess(
            cmd=cmd,
            name=node_name,
            output="screen",
            # Give the agent time to flush its outbox and disconnect cleanly.
            sigterm_timeout="15",
        )

        def on_exit(event, ctx):
            if ctx.is_shutdown or event.returncode == 0:
                return None
            if event.returncode == CONFIGURATION_ERROR:
                return [LogInfo(msg=f"edge-agent stopped on a configuration error (exit {CONFIGURATION_ERROR}); "
                                    f"fix {config_file} and launch again. Not restarting.")]
            # Any other failure (e.g. its ROS 2 side stopped, exit 70): start it again.
            return [TimerAction(period=RESTART_DELAY, actions=start())]

        return [proc, RegisterEventHandler(OnProcessExit(target_action=proc, on_exit=on_exit))]

    return start()


def generate_launch_description():
    return LaunchDescription([
        DeclareLaunchArgument("config_file", default_value="/etc/edge-agent/agent.toml",
                              description="edge-agent configuration (TOML)"),
        DeclareLaunchArgument("node_name", default_value="edge_agent",
                              description="name of the agent's ROS 2 node"),
        DeclareLaunchArgument("namespace", default_value="",
                              description="namespace of the agent's ROS 2 node, e.g. /picker07"),
        DeclareLaunchArgument("executable", default_value="edge-agent",
                              description="the edge-agent program (found on PATH by default)"),
        OpaqueFunction(function=_agent),
    ])
